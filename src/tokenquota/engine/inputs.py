"""The bounds a caller's loose values must keep before the engine uses them.

Every public method of ``Quota`` takes plain Python values (what a route
decoded, what a script passed) and checks them here first, so a bad value is
a ``ValidationError`` naming its field, the same for every backend and
every surface, and never reaches a store. What a value means (a metric, a
window, a subject) is ``domain``'s to parse; here are only the engine's own
limits on size and shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from tokenquota.domain.clock import ensure_utc
from tokenquota.domain.decisions import Mode
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.text import check_text
from tokenquota.storage.base import MAX_PAGE

MAX_KEY_LENGTH: Final = 255
MAX_MODEL_LENGTH: Final = 128
MAX_TAGS: Final = 32
MAX_TAG_LENGTH: Final = 256
MAX_TAG_NAME: Final = 64
MAX_ID_LENGTH: Final = 64
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)


def issued_id(value: object, field: str = "id") -> str:
    """A reservation, lease or key id: bounded text, checked before any lookup."""
    return check_text(value, field, max_length=MAX_ID_LENGTH)


def bounded_text(value: object, field: str, size: int) -> str | None:
    return None if value is None else check_text(value, field, max_length=size)


def mode(value: str | Mode) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ValidationError("mode", "must be enforce or record") from None


def tags(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("tags", "must be an object of string: string")
    if len(value) > MAX_TAGS:
        raise ValidationError("tags", f"at most {MAX_TAGS} tags")
    out: dict[str, str] = {}
    for key, text in value.items():
        name = check_text(key, "tags", max_length=MAX_TAG_NAME)
        out[name] = check_text(text, f"tags.{name}", max_length=MAX_TAG_LENGTH, allow_empty=True)
    return out


def resource(value: str | SubjectRef | None) -> SubjectRef | None:
    return SubjectRef.parse(value, "resource") if value is not None else None


def offset(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**31:
        raise ValidationError("offset", "must be a whole number from 0")
    return value


def limit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PAGE:
        raise ValidationError("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return value


def timestamp(value: datetime | None, now: datetime, retention: timedelta) -> datetime:
    """When an event happened: now by default; never in the future, never past retention."""
    if value is None:
        return now
    at = ensure_utc(value, "timestamp")
    if at > now + MAX_FUTURE_SKEW:
        raise ValidationError("timestamp", "is in the future")
    if at < now - retention:
        raise ValidationError(
            "timestamp", f"is older than the retention horizon ({retention.days} days)"
        )
    return at
