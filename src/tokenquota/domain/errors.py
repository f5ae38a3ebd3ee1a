"""One error family for the whole product.

Every error carries a stable ``code`` (part of the wire contract) and the HTTP
status it maps to, so the API renders errors in one place and the library
raises the same types a client of the service would see.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TokenQuotaError(Exception):
    """Base of every error tokenquota raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ValidationError(TokenQuotaError):
    """Bad input. ``field`` names the part of the request at fault."""

    code = "validation_error"
    status = 422

    def __init__(self, field: str, message: str, *, details: dict[str, Any] | None = None) -> None:
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
