"""Refusals and errors in OpenAI's shape, so OpenAI clients read them as OpenAI's.

Every error under ``/openai/v1`` is ``{"error": {"message", "type", "param",
"code"}}``: a bad key, a bad body, an unknown model, a quota denial, or the
upstream's own error, passed on as the upstream wrote it. A denial is a 429 with
``Retry-After`` and the ``x-ratelimit-*`` headers OpenAI sends, computed from the
decision as the caller may see it: a member key never sees an ancestor's or a
resource's figures there (contract §10, ``Decision.visible_to``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

from fastapi.responses import JSONResponse

from tokenquota.domain.decisions import Decision, LimitStatus

# Our error codes (http/errors.py) as OpenAI's error types.
_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES: Final = {401: "invalid_api_key"}
_TOKEN_METRICS: Final = frozenset({"tokens", "input_tokens", "output_tokens"})


def openai_error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    headers: dict[str, str] | None,
) -> JSONResponse:
    """The renderer ``http.errors`` uses for every error raised under /openai/v1."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    field = details.get("field")
    return openai_error(
        status,
        message,
        kind,
        _CODES.get(status, code),
        field if isinstance(field, str) else None,
        headers,
    )


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``1h2m3s``."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _tightest(statuses: list[LimitStatus]) -> LimitStatus | None:
    bounded = [s for s in statuses if s.remaining is not None and not s.shadow and s.limit != 0]
    if not bounded:
        bounded = [s for s in statuses if s.remaining is not None and not s.shadow]
    if not bounded:
        return None
    return min(bounded, key=lambda s: (s.remaining or 0) / s.limit if s.limit else 0)


def rate_limit_headers(decision: Decision, now: datetime) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` from the closest limits
    on requests and on tokens that ``decision`` (already narrowed for the caller) shows."""
    headers: dict[str, str] = {}
    current = [s for s in decision.limits if s.reset_at is None or s.reset_at > now]
    for name, metrics in (("requests", {"requests"}), ("tokens", _TOKEN_METRICS)):
        status = _tightest([s for s in current if s.metric in metrics])
        if status is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(status.limit)
        headers[f"x-ratelimit-remaining-{name}"] = str(status.remaining)
        if status.reset_at is not None:
            headers[f"x-ratelimit-reset-{name}"] = duration((status.reset_at - now).total_seconds())
    return headers


def denial(decision: Decision, now: datetime) -> JSONResponse:
    """The 429 of a refused call. ``rate_limit_exceeded`` when waiting helps (Retry-After
    says how long), ``insufficient_quota`` when it never will (the limit is too small,
    or a total budget is spent)."""
    headers = rate_limit_headers(decision, now)
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
        code = "rate_limit_exceeded"
    else:
        code = "insufficient_quota"
    return openai_error(429, f"tokenquota: {decision.denial()}", code, code, None, headers)
