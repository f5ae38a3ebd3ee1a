"""The 63-bit bound on every counter and balance (contract §2).

Each amount fits in 63 bits on its own (``metrics.to_units``), but sums of
them are what the stores keep: a counter bucket, a window's SQL ``SUM``, a
prepaid balance. A sum past 2^63 - 1 is an error on PostgreSQL, a silent
float on SQLite and an error part-way through a Redis script, so the stores
refuse the one write that would get there instead.

The check is made on one number per (series, metric): the **lifetime
counter**, the bucket of the ``total`` window, which every store keeps for
every counter metric whether or not a limit names it (``LIFETIME``). Every
bucket and every window sum of a series is at most its lifetime count, so
keeping that one number within the bound keeps all of them within it, and a
``total`` limit never needs a ledger replay when it is first set. Grants are
bounded the same way by the sum of every grant a subject was ever given,
which is at least its balance and at least what ``Balance.granted`` adds up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.clock import EPOCH
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import COUNTERS, MAX_UNITS, Amounts, Metric
from tokenquota.domain.windows import TOTAL

# The (metric, window) pairs every store counts from the first event on.
LIFETIME: Final = frozenset(LimitKey(m, TOTAL) for m in COUNTERS)
LIFETIME_BUCKET: Final = 0
_COUNTER_ORDER: Final = {metric: i for i, metric in enumerate(COUNTERS)}


class AmountTooLarge(ValidationError):
    """Admitting the amount would carry a counter or balance past 2^63 - 1."""

    code = "amount_too_large"


def check_lifetime(
    series: Iterable[str], amounts: Amounts, lifetime: Mapping[tuple[str, Metric], int]
) -> None:
    """Refuse ``amounts`` when it would carry any series' lifetime counter past the bound.

    ``lifetime`` maps (series, metric) to the current lifetime count; absent
    pairs count as 0. The caller reads it in the same atomic step that then
    adds the amounts, so two racing writes cannot both fit the last headroom.
    """
    names = list(series)
    over = [
        (_COUNTER_ORDER[metric], i)
        for metric, amount in amounts.items()
        if amount and metric in _COUNTER_ORDER
        for i, name in enumerate(names)
        if lifetime.get((name, metric), 0) + amount > MAX_UNITS
    ]
    if over:  # the first in (metric, series) order names the error, whatever the amounts' order
        metric_index, name_index = min(over)
        raise too_large(COUNTERS[metric_index], names[name_index])


def too_large(metric: Metric, series: str) -> AmountTooLarge:
    return AmountTooLarge(
        f"amounts.{metric.value}",
        f"would carry the lifetime {metric.value} count of {series} past 2^63 - 1 units",
        details={"series": series},
    )


def check_granted(subject: str, granted: int, amount: int) -> None:
    """Refuse a grant that would carry the subject's sum of grants past the bound."""
    if granted + amount > MAX_UNITS:
        raise grant_too_large(subject)


def grant_too_large(subject: str) -> AmountTooLarge:
    return AmountTooLarge(
        "credits",
        f"would carry the credits granted to {subject} past 2^63 - 1 units",
        details={"subject": subject},
    )


def backfill_start(key: LimitKey, now: datetime, tz: ZoneInfo) -> datetime | None:
    """Where the ledger replay for a newly tracked ``key`` starts; None: no replay at all.

    A decision made from now on reads the buckets of ``read_range(now)`` or
    later ones (the current calendar period, or the rolling span ending now),
    so only events from the first of them on are replayed: the cost of a new
    limit is the size of its window, never of the whole ledger. ``total`` is
    kept from the first event for every metric (``LIFETIME``), so it needs
    none. A back-dated request into a calendar period that ended before the
    limit was first set is measured against what was recorded for that period
    since then (docs/concepts.md).
    """
    if key.window is None or key.window.is_total:
        return None
    first = key.window.read_range(now, tz)[0]
    return EPOCH + timedelta(seconds=first)
