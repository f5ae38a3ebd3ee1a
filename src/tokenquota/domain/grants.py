"""Prepaid credits: grants, and how spending burns them.

A subject that has ever been granted credits is *prepaid*: in enforce mode a
request's credits must fit its balance, the sum of what is left of its live
grants. Spending burns the grant that expires first (grants that never expire
last, then the oldest), so credits that would lapse are used before credits
that would not. A grant's remainder lapses at ``expires_at``: reads simply
stop counting it, so no job has to run on time. Recorded usage beyond the
balance is kept in the ledger but covered by nothing; the balance shows 0,
never less.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tokenquota.domain.subjects import SubjectRef


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    subject: SubjectRef
    amount: int  # credit units
    granted_at: datetime
    expires_at: datetime | None
    remaining: int

    def live(self, at: datetime) -> bool:
        return self.granted_at <= at and (self.expires_at is None or at < self.expires_at)


def burn_order(grants: Iterable[Grant], at: datetime) -> list[Grant]:
    """Live grants with something left, in the order spending uses them."""
    live = [g for g in grants if g.remaining > 0 and g.live(at)]
    return sorted(
        live, key=lambda g: (g.expires_at is None, g.expires_at or at, g.granted_at, g.id)
    )


def allocate(grants: Iterable[Grant], amount: int, at: datetime) -> tuple[dict[str, int], int]:
    """Burn ``amount`` at ``at``: what each grant gives, and what no grant covered."""
    burned: dict[str, int] = {}
    left = amount
    for grant in burn_order(grants, at):
        if not left:
            break
        take = min(left, grant.remaining)
        burned[grant.id] = take
        left -= take
    return burned, left


@dataclass(frozen=True, slots=True)
class Balance:
    """What a prepaid subject has left now."""

    subject: SubjectRef
    remaining: int
    granted: int  # the live grants' original amounts
    next_expiry: datetime | None


def balance(subject: SubjectRef, grants: Sequence[Grant], at: datetime) -> Balance | None:
    """None when the subject was never granted anything (it is not prepaid)."""
    if not grants:
        return None
    live = [g for g in grants if g.live(at)]
    expiries = [g.expires_at for g in live if g.expires_at is not None and g.remaining]
    return Balance(
        subject,
        sum(g.remaining for g in live),
        sum(g.amount for g in live),
        min(expiries) if expiries else None,
    )
