"""Who is calling, and what their role lets them touch (contract §7).

| role    | may                                                              |
| ------- | ---------------------------------------------------------------- |
| admin   | everything, including keys and defaults                          |
| staff   | read any usage; set limits, plans and quotas; no keys            |
| service | check, consume, reserve, lease for any subject; read usage       |
| member  | its own subject and descendants: read; spend for itself only     |
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security import APIKeyHeader
from fastapi.security.base import SecurityBase

from tokenquota.domain.decisions import Decision, Scope
from tokenquota.domain.errors import Forbidden, TokenQuotaError, Unauthorized
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine import Quota
from tokenquota.engine.keycache import MISS
from tokenquota.http import logs

_BOOTSTRAP_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BOOTSTRAP = ApiKey("bootstrap", Role.ADMIN, None, "TOKENQUOTA_ADMIN_KEY", _BOOTSTRAP_EPOCH)
BOOTSTRAP_KEY = _BOOTSTRAP  # the caller that presents TOKENQUOTA_ADMIN_KEY (http.fastpath too)


async def get_quota(request: Request) -> Quota:
    # async on purpose: FastAPI runs a plain ``def`` dependency on a thread, and a
    # thread hop to read an attribute cost more than many a store call.
    quota: Quota = request.app.state.quota
    return quota


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
        return None
    return request.headers.get("x-api-key") or None


class Authenticate(SecurityBase):
    """The ``Caller`` dependency: the caller's key, or a 401.

    It is itself the ``HTTPBearer`` security scheme of the OpenAPI document,
    and ``document_api_key`` adds the ``X-API-Key`` one beside it, instead of
    two scheme dependencies under it: FastAPI solves every dependency of every
    request, at about 20 us each here, for schemes that only the document needs.
    The header is parsed by hand (``presented_key``) so that "Bearer" and
    "Token" both work.

    A key the key cache vouches for is answered on the event loop; only one it
    cannot (unknown here, or older than the cache's bound) costs a thread, on
    the shared pool, to ask the store, at most once per key per bound and
    process. Either way the checks are those of ``Quota.authenticate``, in the
    same order, and it still runs before the body is validated, so a bad key
    is a 401 first.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description="Authorization: Bearer <key> (or Token <key>)")
        self.scheme_name = "HTTPBearer"

    async def __call__(self, request: Request) -> ApiKey:
        presented = presented_key(request)
        if presented is None:
            raise Unauthorized("send an API key: Authorization: Bearer <key> or X-API-Key")
        bootstrap: str | None = request.app.state.admin_key
        if bootstrap and hmac.compare_digest(presented.encode(), bootstrap.encode()):
            logs.seen_key(request.scope, _BOOTSTRAP.id)
            return _BOOTSTRAP
        quota: Quota = request.app.state.quota
        lookups: KeyLookups | None = getattr(request.app.state, "key_lookups", None)
        if lookups is not None:
            key = await lookups.caller(quota, presented)
        else:
            cached = quota.keys.answer(presented)
            key = (
                await anyio.to_thread.run_sync(quota.authenticate, presented)
                if cached is MISS
                else cached
            )
        if key is None:
            raise Unauthorized("the API key is not valid")
        logs.seen_key(request.scope, key.id)
        return key


class KeyLookups:
    """The store lookups of presented keys in flight in one app, one per key.

    When a busy key's cache entry ages past its bound, every request that
    arrives before the store has answered misses the cache. Each asked the
    store on its own thread: under 64 connections that was a burst of
    identical lookups every second (a tenth of the server's CPU on
    PostgreSQL + Redis, more than the decisions' own Python). Now the first
    miss asks, and those that miss meanwhile wait for its answer: a fresh one
    (the lookup started after their key's entry had expired, well within the
    bound), the same ``Quota.authenticate`` verdict, or the same error.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def caller(self, quota: Quota, presented: str) -> ApiKey | None:
        """What ``Quota.authenticate(presented)`` answers: from the cache on the event
        loop when it can, else from the one lookup in flight for this key."""
        cached = quota.keys.answer(presented)
        if cached is not MISS:
            return cached
        flight = self._flights.get(presented)
        if flight is None:
            flight = asyncio.ensure_future(anyio.to_thread.run_sync(quota.authenticate, presented))
            self._flights[presented] = flight
            flight.add_done_callback(lambda _: self._flights.pop(presented, None))
        # Shielded: a request that goes away does not cancel the others' lookup.
        return await asyncio.shield(flight)


authenticate = Authenticate()
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False)  # documented only


def document_api_key(schema: dict[str, Any]) -> None:
    """Add the X-API-Key scheme wherever the document names ``authenticate``'s.

    What FastAPI wrote when both schemes were dependencies of their own: the
    scheme in ``components.securitySchemes`` and, in each operation's
    ``security``, right after ``HTTPBearer``.
    """
    bearer: dict[str, list[str]] = {authenticate.scheme_name: []}
    api_key: dict[str, list[str]] = {_API_KEY.scheme_name: []}
    used = False
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            security = operation.get("security")
            if isinstance(security, list) and bearer in security and api_key not in security:
                security.insert(security.index(bearer) + 1, api_key)
                used = True
    if used:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[_API_KEY.scheme_name] = jsonable_encoder(
            _API_KEY.model, by_alias=True, exclude_none=True
        )


Caller = Annotated[ApiKey, Depends(authenticate)]

READERS = (Role.ADMIN, Role.STAFF, Role.SERVICE)  # may read configuration and any usage
WRITERS = (Role.ADMIN, Role.STAFF)  # may change limits, plans, quotas and grants


def actor_of(caller: ApiKey) -> str:
    """How the audit log names a change made through the API."""
    return f"key:{caller.id}"


QuotaDep = Annotated[Quota, Depends(get_quota)]


def require_role(caller: ApiKey, *roles: Role) -> None:
    if caller.role not in roles:
        raise Forbidden(f"a {caller.role.value} key may not do this")


def in_scope(quota: Quota, caller: ApiKey, ref: SubjectRef) -> bool:
    """A member sees its own subject and every subject below it."""
    if caller.role is not Role.MEMBER:
        return True
    assert caller.subject is not None
    return ref == caller.subject or caller.subject in quota.ancestors(ref)


def require_read(quota: Quota, caller: ApiKey, ref: SubjectRef) -> None:
    if not in_scope(quota, caller, ref):
        raise Forbidden(f"this key may not read {ref}")


def require_consume(caller: ApiKey, ref: SubjectRef) -> None:
    if caller.role in (Role.ADMIN, Role.SERVICE):
        return
    if caller.role is Role.MEMBER and caller.subject == ref:
        return
    raise Forbidden(f"this key may not spend for {ref}")


def decision_scope(quota: Quota, caller: ApiKey, decision: Decision) -> Scope | None:
    """Which subjects named in ``decision`` the caller may see; None when it sees all.

    A decision names its subject and every ancestor, the resource it asked for and
    prepaid wallets: for a member only those in its own subtree stay (contract §10).
    """
    if caller.role is not Role.MEMBER:
        return None
    named = {s.subject for s in (*decision.limits, *decision.blocked_by, *decision.shadow_blocked)}
    return Scope(frozenset(s for s in named if _inside(quota, caller, s)))


def _inside(quota: Quota, caller: ApiKey, subject: str) -> bool:
    try:
        return in_scope(quota, caller, SubjectRef.parse(subject))
    except TokenQuotaError:  # not a subject at all (e.g. a resource share): outside
        return False
