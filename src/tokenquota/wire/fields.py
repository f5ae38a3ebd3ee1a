"""Readers and writers the codecs share: times, refs and numbers as JSON carries them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import Metric, Number
from tokenquota.domain.subjects import SubjectRef


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def optional_time(value: Any) -> datetime | None:
    return None if value is None else time(value)


def ref_text(value: SubjectRef | None) -> str | None:
    return str(value) if value else None


def optional_ref(value: Any) -> SubjectRef | None:
    return SubjectRef.parse(value) if value else None


def number(metric: str, value: Any) -> Number:
    """An amount in the metric's own unit: Decimal for credits, int otherwise."""
    if Metric(metric).is_decimal:
        return Decimal(str(value))
    return int(value)


def limit_number(metric: Metric, value: Any) -> Number:
    """As ``number``, except that unlimited (-1) stays the int -1 for credits too."""
    if metric.is_decimal and value != UNLIMITED:
        return Decimal(str(value))
    return int(value)
