"""Alert thresholds as configuration: whole percentages of a limit.

Kept apart from ``alerts`` so that ``limits`` (a rule carries its thresholds)
can validate them without importing what computes the alert events, which
itself reads plans and limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tokenquota.domain.errors import ValidationError

MAX_THRESHOLDS: Final = 10
# Above 100 % still means something: record-mode usage and shadow limits pass a limit.
MAX_PERCENT: Final = 1000


def parse_thresholds(value: object, field: str = "thresholds") -> tuple[int, ...]:
    """Whole percentages in 1..1000, at most ten, answered sorted and without repeats."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValidationError(field, "must be a list of whole percentages, e.g. [50, 80, 100]")
    if len(value) > MAX_THRESHOLDS:
        raise ValidationError(field, f"at most {MAX_THRESHOLDS} thresholds")
    seen: set[int] = set()
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValidationError(f"{field}[{i}]", "must be a whole percentage")
        if not 1 <= item <= MAX_PERCENT:
            raise ValidationError(f"{field}[{i}]", f"must be between 1 and {MAX_PERCENT}")
        seen.add(item)
    return tuple(sorted(seen))


def thresholds_text(thresholds: Sequence[int]) -> str | None:
    """The stored form, "50,80,100"; None (NULL) when there are none."""
    return ",".join(map(str, thresholds)) if thresholds else None


def thresholds_from_text(text: str | None) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",")) if text else ()


__all__ = [
    "MAX_PERCENT",
    "MAX_THRESHOLDS",
    "parse_thresholds",
    "thresholds_from_text",
    "thresholds_text",
]
