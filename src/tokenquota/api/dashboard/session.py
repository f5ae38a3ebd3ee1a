"""Signing in to the dashboard: the API key itself, kept in an HttpOnly cookie.

Why the key and not a session of our own: a session id would need a table or
a signing secret shared by every worker and replica, and would outlive a
revoked key. The cookie instead carries what a /v1 call carries in its
Authorization header, and every page checks it exactly as /v1 checks a key
(``http.auth.authenticate``, the key cache included): the same roles, the
same isolation, and a revoked key stops working within ``key_cache_seconds``.

The cookie is ``HttpOnly`` (no script reads it; the pages have none anyway),
``SameSite=Strict`` (another site cannot make a browser send it, so no
cross-site request acts with it), ``Secure`` when the page came over HTTPS,
scoped to ``/dashboard`` and kept for ``SESSION_SECONDS``. The key arrives
in a POST body, never in a URL, so no access log or history holds it, and no
log line here names it.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from tokenquota.domain.errors import TokenQuotaError
from tokenquota.domain.keys import ApiKey
from tokenquota.http.auth import authenticate

COOKIE: Final = "tokenquota_dashboard"
PATH: Final = "/dashboard"
SESSION_SECONDS: Final = 8 * 3600
MAX_KEY_LENGTH: Final = 512


async def key_of(request: Request, presented: str) -> ApiKey | None:
    """The key ``presented`` stands for, checked as /v1 checks a request's key; None if none."""
    if not presented or len(presented) > MAX_KEY_LENGTH or not presented.isprintable():
        return None
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    headers.append((b"authorization", b"Bearer " + presented.encode()))
    try:
        return await authenticate(Request({**request.scope, "headers": headers}))
    except (TokenQuotaError, UnicodeError):
        return None


async def signed_in(request: Request) -> ApiKey | None:
    return await key_of(request, request.cookies.get(COOKIE, ""))


def keep(response: Response, request: Request, presented: str) -> None:
    response.set_cookie(
        COOKIE,
        presented,
        max_age=SESSION_SECONDS,
        path=PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def forget(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
