"""Free text at the door (contract §1): one rule for every text field.

Every store must hold what the door lets in, and every error must be
renderable. PostgreSQL refuses NUL in ``text`` and ``\\u0000`` in ``jsonb``;
no UTF-8 encoder takes a lone surrogate (which JSON's ``\\ud800`` escape
produces). Letting either through turned one request into a poisoned ledger
row (the Redis mover stuck on it) or a 500 whose connection died. So text is
checked here, once, before any store sees it, and the same on every backend.

What is refused, and why:

- lone surrogates (category Cs): not Unicode text at all; nothing can encode them;
- control characters (category Cc: C0, DEL, C1), NUL first among them: no name,
  model or key needs a tab or a bell, and they hide in logs and terminals;
- line and paragraph separators (Zl, Zp: U+2028, U+2029): line breaks by
  another name, refused for the same reason as ``\\n``.

What is kept: format characters (Cf: zero-width joiners in emoji, bidi marks
in right-to-left names, soft hyphens) are part of how real names are written;
private-use and not-yet-assigned code points are valid Unicode a newer
version may give meaning to.

Metadata is JSON, not a name: its strings and keys may carry tabs, newlines
and carriage returns (a description), but no other control character, and
never NUL or a lone surrogate, which no store keeps.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from tokenquota.domain.errors import UNSAFE_CATEGORIES, ValidationError

# The layout characters a multi-line description needs; metadata may hold them.
LAYOUT: Final = frozenset("\t\n\r")


def text_problem(value: str, *, allow: frozenset[str] = frozenset()) -> str | None:
    """Why ``value`` is not acceptable text, or None; ``allow`` names controls that may pass."""
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":
            return f"is not valid Unicode (a lone surrogate at position {index})"
        if char == "\x00":
            return f"must not contain NUL (at position {index})"
        if category in UNSAFE_CATEGORIES and char not in allow:
            return f"must not contain control characters (U+{ord(char):04X} at position {index})"
    return None


def check_text(value: object, field: str, *, max_length: int, allow_empty: bool = False) -> str:
    """``value`` as acceptable text of at most ``max_length`` characters, else a 422."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if not value and not allow_empty:
        raise ValidationError(field, "must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters")
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(field, problem)
    return value


def check_json_text(value: Any, field: str) -> None:
    """Refuse NUL, lone surrogates and controls other than ``LAYOUT`` in a JSON value."""
    if isinstance(value, str):
        problem = text_problem(value, allow=LAYOUT)
        if problem is not None:
            raise ValidationError(field, problem)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                problem = text_problem(key, allow=LAYOUT)
                if problem is not None:
                    raise ValidationError(field, f"a key {problem}")
            check_json_text(item, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_text(item, f"{field}[{index}]")
