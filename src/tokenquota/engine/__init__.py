"""The engine: the one place that turns a request into a decision (see ``quota.py``)."""

from tokenquota.engine.quota import (
    DEFAULT_TTL,
    Acquired,
    DefaultRule,
    Granularity,
    GroupBy,
    HistoryPoint,
    Hold,
    LimitsView,
    Quota,
    Reserved,
    Usage,
    ensure_utc,
    open,
)

__all__ = [
    "DEFAULT_TTL",
    "Acquired",
    "DefaultRule",
    "Granularity",
    "GroupBy",
    "HistoryPoint",
    "Hold",
    "LimitsView",
    "Quota",
    "Reserved",
    "Usage",
    "ensure_utc",
    "open",
]
