"""tokenquota: quota and usage metering for AI features.

>>> import tokenquota
>>> q = tokenquota.open("memory://")
>>> q.set_limit("user:alice", "tokens", "day", 50_000)  # doctest: +ELLIPSIS
LimitsView(...)
>>> q.consume("user:alice", tokens=1200).allowed
True
"""

from tokenquota.client import AsyncClient, Client, QuotaExceeded
from tokenquota.domain.clock import Clock, FrozenClock, SystemClock
from tokenquota.domain.decisions import Decision, LimitStatus, Mode
from tokenquota.domain.errors import (
    Conflict,
    CycleError,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    StoreUnreachable,
    TokenQuotaError,
    ValidationError,
)
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import UNLIMITED, Plan, Rule
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import DefaultRule, HistoryPoint, LimitsView, Usage
from tokenquota.engine import Quota, open

__all__ = [
    "UNLIMITED",
    "AsyncClient",
    "AuditEntry",
    "Client",
    "Clock",
    "Conflict",
    "CycleError",
    "Decision",
    "DefaultRule",
    "Event",
    "FrozenClock",
    "HistoryPoint",
    "IdempotencyConflict",
    "LimitStatus",
    "LimitsView",
    "Mode",
    "NotFound",
    "Plan",
    "Quota",
    "QuotaExceeded",
    "Rule",
    "StoreUnavailable",
    "StoreUnreachable",
    "Subject",
    "SubjectRef",
    "SystemClock",
    "TokenQuotaError",
    "Usage",
    "ValidationError",
    "open",
]
