"""Every error leaves in one shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenquota.domain.errors import TokenQuotaError, display, display_json

log = logging.getLogger("tokenquota.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "quota_exceeded",
    503: "store_unavailable",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


class Renderer(Protocol):
    """Renders an error in one API surface's own shape (contract §8)."""

    def __call__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any],
        headers: dict[str, str] | None,
    ) -> JSONResponse: ...


def register_surface(app: FastAPI, prefixes: tuple[str, ...], renderer: Renderer) -> None:
    """Errors on paths under ``prefixes`` leave in ``renderer``'s shape, not the native one."""
    app.state.error_surfaces = [
        *getattr(app.state, "error_surfaces", []),
        *((prefix, renderer) for prefix in prefixes),
    ]


def render(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # One door for every surface's renderer: a field name or message built from
    # the request (a JSON key, a path segment) may hold a lone surrogate, which
    # no encoder takes; rendering it raw turned the 422 into a 500 and a reset
    # keep-alive connection.
    message = display(message)
    details = display_json(details or {})
    path = request.url.path
    surfaces: list[tuple[str, Renderer]] = getattr(request.app.state, "error_surfaces", [])
    for prefix, renderer in surfaces:
        # A whole path segment: "/v1/quotas" claims "/v1/quotas/…", not "/v1/quotasX".
        stem = prefix.rstrip("/")
        if path == stem or path.startswith(stem + "/"):
            return renderer(status, code, message, details or {}, headers)
    return error_response(status, code, message, details, headers)


def _field(loc: tuple[Any, ...]) -> str:
    """("body", "limits", 1, "window") -> "limits[1].window", as the engine names fields."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field or "body"


async def _quota_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TokenQuotaError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return render(request, exc.status, exc.code, exc.message, exc.details, headers)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    # Each problem keeps the validator's own words: the compat surfaces translate
    # those into their dialects (compat/waldur.py). The message says what to do.
    problems = [
        {
            # A body that is not JSON at all has no field to name but itself.
            "field": "body" if e.get("type") == "json_invalid" else _field(tuple(e.get("loc", ()))),
            "message": str(e.get("msg", "")),
        }
        for e in errors
    ]
    if not errors:
        return render(request, 422, "validation_error", "body: invalid request", {"field": "body"})
    field = problems[0]["field"]
    details: dict[str, Any] = {"field": field, "errors": problems}
    if errors[0].get("type") == "json_invalid":
        details.update(_json_position(exc.body, errors[0]))
    message = f"{field}: {_actionable(request, exc, errors[0])}"
    return render(request, 422, "validation_error", message, details)


SEND_JSON = "send the body as JSON with Content-Type: application/json"


def _actionable(request: Request, exc: RequestValidationError, error: Any) -> str:
    """The framework's message, or what to do instead when it only describes a symptom.

    Without a JSON content type the framework never parses the body, and says
    the body "should be a valid dictionary" (``curl -d`` sends a form type);
    a parse failure says "JSON decode error" without saying where.
    """
    if error.get("type") == "json_invalid":
        position = _json_position(exc.body, error)
        reason = str((error.get("ctx") or {}).get("error") or "not valid JSON")
        if "line" not in position:
            return f"not valid JSON: {reason}"
        return (
            f"not valid JSON: {reason} at line {position['line']} column {position['column']}"
            f" (char {position['position']})"
        )
    if tuple(error.get("loc", ())) == ("body",) and not _sends_json(request):
        return SEND_JSON
    return str(error.get("msg", ""))


def _sends_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _json_position(document: Any, error: Any) -> dict[str, int]:
    """Line and column (1-based, as editors count) and the character offset of a JSON error."""
    loc = tuple(error.get("loc", ()))
    offset = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if offset is None:
        return {}
    if not isinstance(document, str):
        return {"position": offset}
    before = document[:offset]
    line = before.count("\n") + 1
    return {"line": line, "column": offset - (before.rfind("\n") + 1) + 1, "position": offset}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # Only the framework raises 400: a body it could not even decode (not UTF-8).
        # That is bad input like any other, so it gets the documented 422.
        message = f"body: {exc.detail}"
        return render(request, 422, "validation_error", message, {"field": "body"})
    code = _HTTP_CODES.get(exc.status_code, "error")
    return render(
        request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    message = "an unexpected error occurred; it has been logged"
    return render(request, 500, "internal_error", message)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TokenQuotaError, _quota_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
