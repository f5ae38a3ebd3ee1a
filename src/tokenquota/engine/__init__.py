"""The engine: the one place that turns a request into a decision.

``quota.py`` is the facade (``Quota`` and ``open``), with its configuration
half in ``config.py``; ``planner.py`` resolves limits into a ``DebitPlan``;
``outage.py`` and ``spool.py`` admit while the store is unreachable
(``on_store_error="open"``); ``inputs.py`` bounds what callers pass in. The
answers it gives are ``domain`` types (``domain/views.py``), re-exported
here for the callers that have always imported them from the engine.
"""

from tokenquota.domain.clock import ensure_utc
from tokenquota.domain.holds import DEFAULT_TTL
from tokenquota.domain.views import (
    Acquired,
    DefaultRule,
    Granularity,
    GroupBy,
    HistoryPoint,
    Hold,
    LimitsView,
    Reserved,
    Usage,
)
from tokenquota.engine.quota import Quota, open

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
