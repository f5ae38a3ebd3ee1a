"""What a decision answers: the limit statuses and the ``Decision`` every surface shows.

Apart from ``decisions`` (which computes them) because nearly everything reads
these types while only the stores' steps compute them; ``decisions`` re-exports
them, so either name works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from tokenquota.domain.errors import TokenQuotaError
from tokenquota.domain.frozen import builder, built_on_read
from tokenquota.domain.metrics import Number
from tokenquota.domain.plans import Mode


class Reason(StrEnum):
    """Why a limit refused a request; stable wire values.

    Clients need this more than the figures: it says whether waiting helps.
    """

    LIMIT_REACHED = "limit_reached"  # what is used (or held) leaves too little now
    EXCEEDS_LIMIT = "exceeds_limit"  # the amount alone is more than the whole limit
    INSUFFICIENT_CREDITS = "insufficient_credits"  # the prepaid balance is too low
    # Only in what a member sees: a limit outside its subtree refused it.
    ANCESTOR_LIMIT = "ancestor_limit"
    RESOURCE_LIMIT = "resource_limit"  # a resource's capacity or its rule for the consumer


@dataclass(frozen=True, slots=True)
class Scope:
    """The subjects a viewer may see in a decision (contract §10).

    A member key sees its own subject and its descendants; a decision lists the
    subject and its ancestors, resources and prepaid wallets. ``subjects`` holds
    those of them inside the member's subtree; everything else is withheld.
    """

    subjects: frozenset[str]


@dataclass(frozen=True, slots=True)
class WithheldBlock:
    """A refusal by a limit the viewer may not see: why, never whose or how much."""

    reason: Reason
    metric: str


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """One limit as a person reads it: numbers in the metric's own unit."""

    subject: str
    metric: str
    window: str | None
    limit: Number  # -1 = unlimited
    source: str
    shadow: bool
    used: Number | None  # None for per-request caps
    reserved: Number
    remaining: Number | None  # None when unlimited; never negative
    reset_at: datetime | None
    within_limit: bool
    # Why this limit refused the request (``Reason``); None unless it did.
    reason: str | None = None


new_status: Final = builder(LimitStatus)  # LimitStatus(...) at a quarter of the cost


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    subject: str
    mode: Mode
    amounts: Mapping[str, Number]
    timestamp: datetime
    limits: tuple[LimitStatus, ...]  # every limit measured, as it stands after this request
    blocked_by: tuple[LimitStatus, ...] = ()
    shadow_blocked: tuple[LimitStatus, ...] = ()  # would have blocked; shadow limits never do
    retry_after: int | None = None  # seconds; None when waiting will not help
    event_id: int | None = None
    replayed: bool = False  # True when an idempotency key returned an earlier result
    # True when the store was unreachable and on_store_error="open" admitted
    # the request without it: no limit was checked, the usage waits in the spool.
    failed_open: bool = False
    # Why it was refused (a ``Reason``): exceeds_limit when some blocking limit is
    # smaller than the amount itself, so no wait helps. None when allowed.
    reason: str | None = None
    # Refusals by limits outside the viewer's subtree (``visible_to``).
    blocked_outside: tuple[WithheldBlock, ...] = ()
    # How to build ``limits`` when ``decide`` left it unset (``deferred_decision``):
    # None once built, and for every decision built with its limits.
    _pending: Callable[[], tuple[LimitStatus, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def tightest(self, now: datetime) -> LimitStatus | None:
        """The limit closest to blocking: what RateLimit-* headers describe.

        Measured as a fraction of the limit's size, so a credits limit of 10.5
        with 10.4 left is not tighter than a tokens limit of 100 with 50 left.
        When denied, the blocking limits come first. A status whose period
        ended before ``now`` (a back-dated record's) says nothing about what
        may be spent now, so it never describes the headers.
        """
        best = _tightest(self.blocked_by, now)
        return best if best is not None else _tightest(self.limits, now)

    def visible_to(self, scope: Scope) -> Decision:
        """This decision as a viewer confined to ``scope`` may see it (contract §10).

        Statuses of subjects outside the scope (ancestors, resources, their
        wallets) are dropped; a refusal by one becomes a ``WithheldBlock``
        saying only that an ancestor's limit (or a resource) refused, and
        ``retry_after`` stays, since when to retry is the member's to know.
        """

        def sees(status: LimitStatus) -> bool:
            return status.subject in scope.subjects

        withheld = tuple(
            WithheldBlock(
                Reason.RESOURCE_LIMIT if s.source in RESOURCE_SOURCES else Reason.ANCESTOR_LIMIT,
                s.metric,
            )
            for s in self.blocked_by
            if not sees(s)
        )
        return replace(
            self,
            limits=tuple(s for s in self.limits if sees(s)),
            blocked_by=tuple(s for s in self.blocked_by if sees(s)),
            shadow_blocked=tuple(s for s in self.shadow_blocked if sees(s)),
            blocked_outside=self.blocked_outside + withheld,
        )

    def denial(self) -> str:
        """One line naming the limits that refused this decision (only those it shows)."""
        named = [f"{s.subject} {s.metric}/{s.window or '-'}" for s in self.blocked_by]
        named += [
            f"a resource's {w.metric} limit"
            if w.reason is Reason.RESOURCE_LIMIT
            else f"an ancestor's {w.metric} limit"
            for w in self.blocked_outside
        ]
        return f"denied by {', '.join(named)}"

    def as_replay(self) -> Decision:
        return replace(self, replayed=True)

    def numbered(self, event_id: int | None) -> Decision:
        """``replace(self, event_id=event_id)``, leaving limits not yet built unbuilt.

        A SQL store learns its event's id after deciding; ``replace`` would read
        (build) every status, and costs several times this.
        """
        pending = self._pending
        if pending is None:
            return replace(self, event_id=event_id)
        head = (self.allowed, self.subject, self.mode, self.amounts, self.timestamp)
        tail = (self.replayed, self.failed_open, self.reason, self.blocked_outside)
        return deferred_decision(
            *head, self.blocked_by, self.shadow_blocked, self.retry_after, event_id, *tail, pending
        )


_LIMITS: Final[Any] = Decision.__dict__["limits"]  # the slot itself (a member descriptor)
_PENDING: Final[Any] = Decision.__dict__["_pending"]


def _pending_limits(decision: Decision) -> tuple[LimitStatus, ...]:
    pending = _PENDING.__get__(decision, Decision)
    if pending is None:  # another thread built them meanwhile
        return _LIMITS.__get__(decision, Decision)  # type: ignore[no-any-return]
    return pending()  # type: ignore[no-any-return]


DeferredDecision: Final = built_on_read(
    Decision,
    "limits",
    _pending_limits,
    clear="_pending",
    doc="""A ``Decision`` whose ``limits`` are built on first read, from its ``_pending``.

    ``decide`` defers the statuses of an admitted decision (about half of its
    cost on ``memory://``) until someone reads them; most in-process callers
    only read ``allowed`` (``frozen.built_on_read``).
    """,
)


new_decision: Final = builder(Decision)
# A DeferredDecision, built with ``_pending`` as its last argument and ``limits`` unset.
deferred_decision: Final = builder(DeferredDecision, defer=("limits", "_pending"))
RESOURCE_SOURCES = frozenset({"capacity", "saturation", "resource"})


def _tightest(pool: Sequence[LimitStatus], now: datetime) -> LimitStatus | None:
    """``Decision.tightest`` within one pool: among its current bounded statuses (not
    unlimited, not shadow, a period not ended by ``now``), the first with the smallest
    fraction left, one with a period before one without. One pass, no list."""
    best: LimitStatus | None = None
    best_n = best_d = 0
    for s in pool:
        if s.remaining is None or s.shadow:
            continue
        reset_at = s.reset_at
        if reset_at is not None and not reset_at > now:
            continue
        n, d = _fraction_left(s)
        if best is None:
            best, best_n, best_d = s, n, d
            continue
        if n * best_d < best_n * d or (
            n * best_d == best_n * d and best.reset_at is None and reset_at is not None
        ):
            best, best_n, best_d = s, n, d
    return best


def _fraction_left(status: LimitStatus) -> tuple[int, int]:
    """remaining / limit, exactly, as a numerator and a positive denominator; a limit
    of 0 has nothing left. Compared by cross-multiplying, never reduced: a
    ``Fraction`` per status (its gcd) was about 10 µs of every HTTP answer's
    RateLimit headers (docs/performance-log.md, session 10)."""
    remaining, limit = status.remaining, status.limit
    assert remaining is not None
    if not limit > 0:
        return 0, 1
    if isinstance(remaining, int) and isinstance(limit, int):
        return remaining, limit
    rn, rd = remaining.as_integer_ratio()  # Decimal credits: also exact
    ln, ld = limit.as_integer_ratio()
    return rn * ld, rd * ln


class QuotaExceeded(TokenQuotaError):
    """A consume, reserve or acquire was denied (HTTP 429); nothing was charged or held.

    ``decision`` is the whole denied decision, ``blocked_by`` the limits that
    refused it and ``retry_after`` the seconds until every one of them would
    admit it (None when waiting will not help, e.g. a ``total`` window).
    """

    code = "quota_exceeded"
    status = 429

    def __init__(
        self, message: str, decision: Decision, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.decision = decision

    @property
    def retry_after(self) -> int | None:
        return self.decision.retry_after

    @property
    def blocked_by(self) -> tuple[LimitStatus, ...]:
        return self.decision.blocked_by
