"""Error answers read back: ``{"error": {"code", "message", "details"}}`` to an exception.

The server renders the body from the exception's stable ``code``; this is the
inverse, so a caller over HTTP catches the same exception class the library
raises in process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tokenquota.domain.decisions import QuotaExceeded
from tokenquota.domain.errors import (
    Conflict,
    CycleError,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    TokenQuotaError,
    Unauthorized,
    ValidationError,
)
from tokenquota.domain.holds import ReservationClosed
from tokenquota.wire.decisions import decode_decision

_BY_CODE: Final[dict[str, type[TokenQuotaError]]] = {
    cls.code: cls
    for cls in (
        NotFound,
        Conflict,
        CycleError,
        IdempotencyConflict,
        ReservationClosed,
        Unauthorized,
        Forbidden,
        StoreUnavailable,
    )
}
_BY_STATUS: Final[dict[int, type[TokenQuotaError]]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: StoreUnavailable,
}


def decode_error(status: int, body: Any, text: str) -> TokenQuotaError:
    """The exception an error answer stands for, chosen by its stable ``code``.

    ``body`` is the decoded JSON (None when the answer was not JSON) and
    ``text`` the raw answer, quoted when the body is not our error shape.
    """
    try:
        error = body["error"]
        code = str(error["code"])
        message = str(error.get("message") or code)
        details = dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not our error shape (e.g. a proxy's HTML page): go by the status alone.
        code, message, details = "", f"HTTP {status}: {text[:200]}", {}
    if code == "quota_exceeded" and isinstance(details.get("decision"), Mapping):
        return QuotaExceeded(message, decode_decision(details["decision"]), details=details)
    if code == "validation_error" or (not code and status == 422):
        field = str(details.get("field") or "body")
        exc = ValidationError(field, message, details=details)
        # Keep the server's message as it is: it already names the field.
        exc.message = message
        exc.args = (message,)
        return exc
    cls = _BY_CODE.get(code) or (None if code else _BY_STATUS.get(status))
    if cls is not None:
        return cls(message, details=details)
    return TokenQuotaError(
        f"{message} ({code or 'error'}, HTTP {status})" if code else message, details=details
    )
