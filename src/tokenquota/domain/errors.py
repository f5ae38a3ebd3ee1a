"""One error family for the whole product.

Every error carries a stable ``code`` (part of the wire contract) and the HTTP
status it maps to, so the API renders errors in one place and the library
raises the same types a client of the service would see.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar, Final

# Characters an error message shows as escapes, never raw: lone surrogates
# (no encoder takes them: a message holding one made its own 500), controls
# and line separators (they forge log lines and break terminals).
UNSAFE_CATEGORIES: Final = frozenset({"Cs", "Cc", "Zl", "Zp"})


def display(value: str) -> str:
    """``value`` safe to put in a message or a log: unsafe characters as visible escapes."""
    if value.isprintable():  # the common case; every unsafe character is non-printable
        return value
    return "".join(
        _escape(char) if unicodedata.category(char) in UNSAFE_CATEGORIES else char for char in value
    )


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_json(value: Any) -> Any:
    """``display`` applied to every string (and key) inside a JSON-shaped value."""
    if isinstance(value, str):
        return display(value)
    if isinstance(value, Mapping):
        return {
            (display(k) if isinstance(k, str) else k): display_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [display_json(v) for v in value]
    return value


class TokenQuotaError(Exception):
    """Base of every error tokenquota raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        # Made safe once, here: every surface and log renders what it is given.
        message = display(message)
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = display_json(details or {})


class ValidationError(TokenQuotaError):
    """Bad input. ``field`` names the part of the request at fault."""

    code = "validation_error"
    status = 422

    def __init__(self, field: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        field = display(field)
        super().__init__(f"{field}: {message}", details={"field": field, **(details or {})})
        self.field = field


class Unauthorized(TokenQuotaError):
    """No key, or not a live one; the message never says which."""

    code = "unauthorized"
    status = 401


class Forbidden(TokenQuotaError):
    code = "forbidden"
    status = 403


class NotFound(TokenQuotaError):
    code = "not_found"
    status = 404


class Conflict(TokenQuotaError):
    code = "conflict"
    status = 409


class CycleError(Conflict):
    """Setting these parents would make a subject its own ancestor."""

    code = "parent_cycle"


class IdempotencyConflict(Conflict):
    """The key was used before for a different request."""

    code = "idempotency_conflict"


class StoreUnavailable(TokenQuotaError):
    """The store cannot answer now; callers fail closed unless configured otherwise."""

    code = "store_unavailable"
    status = 503


class StoreUnreachable(StoreUnavailable):
    """The store did not answer at all (connection refused, timed out, data lost).

    The one case ``on_store_error="open"`` admits without the store: a store
    that answers "retry" (a busy resource, limits changing) is still deciding.
    """
