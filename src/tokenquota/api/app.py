"""The FastAPI application, built by ``create_app(settings)``.

Route handlers that touch the store are plain ``def`` functions run on bounded
thread pools, so the event loop never waits on storage: decisions and reads
each on their own (``http.capacity``), everything else on AnyIO's default
(``Settings.threads``). See docs/architecture.md for why the core is synchronous.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenquota import gateway
from tokenquota.api.dashboard import pages as dashboard
from tokenquota.api.routes import (
    admin,
    grants,
    health,
    holds,
    insights,
    metering,
    reads,
    resources,
    webhooks,
)
from tokenquota.api.schemas import CheckIn, ConsumeIn
from tokenquota.compat import SURFACES
from tokenquota.domain.clock import Clock
from tokenquota.engine import Quota
from tokenquota.engine.delivery import DeliveryOptions, start_delivery
from tokenquota.engine.retention import start_pruning
from tokenquota.engine.webhooks import open_webhooks, server_key
from tokenquota.http import auth, errors, fastpath, logs
from tokenquota.http.capacity import (
    RETRY_AFTER_SECONDS,
    Capacity,
    TooManyHeavyReads,
    done,
    serving,
)
from tokenquota.http.metrics import Metrics
from tokenquota.settings import Settings, open_quota
from tokenquota.wire.version import VERSION

ROUTERS = [
    metering.router,
    holds.router,
    reads.router,
    admin.router,
    resources.router,
    grants.router,
    health.router,
    insights.router,
    webhooks.router,
]

DESCRIPTION = """\
Quota and usage metering for AI features.

Authenticate with an API key in `Authorization: Bearer <key>`,
`Authorization: Token <key>` or `X-API-Key: <key>`. Errors always have the shape
`{"error": {"code", "message", "details"}}`; `details.field` names the field at
fault in a 422.
"""


# FastAPI's own OpenTelemetry hooks (FastAPI >= 0.16x) look for a configured
# provider in the environment on every request: about 10 us each on the development
# machine, a twentieth of a bare endpoint. tokenquota's telemetry is /metrics;
# the hooks are off where this FastAPI has them.
_NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings | None = None,
    *,
    quota: Quota | None = None,
    clock: Clock | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """Build the app. ``quota`` lets a caller share an open engine (tests, embedding);
    ``freeze_heap`` is for ``serve``'s processes, which hold nothing but the app
    (``frozen_heap``)."""
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        opened = (
            quota
            if quota is not None
            else await anyio.to_thread.run_sync(
                functools.partial(open_quota, settings, clock=clock)
            )
        )
        app.state.quota = opened
        app.state.pruning = start_pruning(opened, **settings.pruning())
        key = server_key(settings.webhook_key.get_secret_value() if settings.webhook_key else None)
        app.state.webhooks = open_webhooks(opened, key)
        app.state.delivery = start_delivery(
            opened, key, DeliveryOptions(**settings.webhooks()), on_outcome=metrics.delivered
        )
        if app.state.webhooks is not None:
            metrics.webhook_counts = app.state.webhooks.tables.delivery_counts
        try:
            with frozen_heap(freeze_heap):
                yield
        finally:
            if app.state.delivery is not None:
                await anyio.to_thread.run_sync(app.state.delivery.close)
            if app.state.pruning is not None:
                await anyio.to_thread.run_sync(app.state.pruning.close)
            # The lanes first: a call still running ends before its store is closed.
            await anyio.to_thread.run_sync(capacity.close)
            metrics.close()
            await gateway.close(app.state)
            if quota is None:
                await anyio.to_thread.run_sync(opened.close)

    app = FastAPI(
        title="tokenquota",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        **_NO_OTEL,
    )
    app.state.settings = settings
    app.state.admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    app.state.key_lookups = auth.KeyLookups()
    metrics = app.state.metrics = Metrics()
    errors.install(app)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(TooManyHeavyReads, _too_many_heavy_reads)
    for router in ROUTERS:
        app.include_router(router)
    app.router.routes.extend(dashboard.routes)  # HTML for browsers (api/dashboard/pages.py)
    for surface in SURFACES:
        app.include_router(surface.router)
        errors.register_surface(app, surface.PREFIXES, surface.render_error)
    app.include_router(gateway.router)  # /openai/v1: gateway mode (docs/gateway.md)
    errors.register_surface(app, (gateway.PREFIX,), gateway.render_error)
    capacity = Capacity.of(
        settings.decision_threads, settings.read_threads, settings.heavy_reads_per_key
    )
    fast = {
        "/v1/consume": fastpath.FastRoute(ConsumeIn, metering.decide_consume, capacity.decisions),
        "/v1/check": fastpath.FastRoute(CheckIn, metering.decide_check, capacity.decisions),
    }
    app.add_middleware(
        Door, capacity=capacity, max_bytes=settings.max_body_bytes, metrics=metrics, fast=fast
    )
    app.state.capacity = capacity
    capacity.decisions.observe = metrics.lane("decisions")
    capacity.reads.observe = metrics.lane("reads")
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, plus the X-API-Key scheme beside the bearer one
    (``auth.document_api_key``) and the 413 every operation with a body can answer.

    Added here rather than on each route: BodyLimit answers it before any route
    runs, in the shape of the surface the path belongs to, which is the shape
    that surface documents for its 401.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # generated as usual, and cached on the app
    auth.document_api_key(schema)
    limit = app.state.settings.max_body_bytes
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "requestBody" not in operation or "413" in responses:
                continue
            shape = responses.get("401", {}).get("content")
            responses["413"] = {
                "description": (
                    f"payload_too_large: the body is over max_body_bytes ({limit} "
                    "bytes), with or without a Content-Length"
                ),
                **({"content": shape} if shape else {}),
            }
    return schema


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with ``Allow`` naming every method the path takes.

    The router answers 405 from the first route whose path matched, and each
    route holds one method, so its own ``Allow`` named only that one.
    """
    assert isinstance(exc, HTTPException)
    # Asked of the router itself, method by method: a full match is a method the
    # path takes, whichever route (or included router) serves it.
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return errors.render(request, 405, "method_not_allowed", str(exc.detail), headers=headers)


async def _too_many_heavy_reads(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooManyHeavyReads)
    return errors.render(
        request,
        429,
        "too_many_requests",
        str(exc),
        {"in_flight_per_key": exc.bound},
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``, one per worker process.

    The serve command hands its resolved settings over in the environment.
    """
    packed = os.environ.get("TOKENQUOTA_SETTINGS_JSON")
    settings = Settings.model_validate_json(packed) if packed else Settings.load()
    return create_app(settings, freeze_heap=True)


@contextlib.contextmanager
def frozen_heap(enabled: bool) -> Iterator[None]:
    """While the app serves, what it built at startup is out of the collector's way.

    Under load, the objects of requests in flight outlive young collections and
    are promoted, so full collections came about once a second, each walking
    the whole heap (imports, routes, models, the store's engine: about 10^5
    objects) with the GIL held: 100 to 190 ms each on a loaded machine, in
    which the worker answered nothing; about 110 us of CPU a request on SQLite
    at 64 connections. With the startup heap frozen (``gc.freeze``) a full
    collection walks only what came after: 2 to 4 ms (docs/performance-log.md).
    Garbage is collected first, so none is frozen with the rest, and the heap
    is unfrozen at shutdown, so an app built and dropped in a process that goes
    on leaves nothing uncollectable behind.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Door:
    """Every request's way in: the app's lanes, the body cap (413) and the latency.

    One ASGI layer rather than three: each layer is a frame that every request
    enters and that is resumed at every await below it (a thread hop is one).

    - Lanes: the app's ``Capacity`` becomes the current one (``http.capacity``),
      for every kind of scope.
    - Body cap: a body over ``max_bytes`` is refused with 413 before any of it
      is parsed: at once when its Content-Length says so, else as soon as the
      bytes read pass the cap.
    - Latency per route template and a count per status code, for /metrics
      (a body refused for its Content-Length counts as route "unmatched").
    - The request id (``http.logs``): the caller's ``X-Request-ID`` when it is
      plain, else a new one, echoed on every answer (errors and the fast path
      included), and the request's log line once it is answered.
    - The hot routes' short way (``http.fastpath``): ``POST`` to one of ``fast``
      is answered there when it is well formed and its key is cached; anything
      else goes on to FastAPI with its body replayed.
    """

    def __init__(
        self,
        app: ASGIApp,
        capacity: Capacity,
        max_bytes: int,
        metrics: Metrics,
        fast: dict[str, fastpath.FastRoute] | None = None,
    ) -> None:
        self.app = app
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.fast = fast or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = serving(self.capacity)
        try:
            if scope["type"] == "http":
                await self._http(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            done(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = None
        presented_id = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value  # the last one, should there be several
            elif name == b"x-request-id" and presented_id is None:
                presented_id = value
        info = logs.RequestLog(logs.request_id_from(presented_id))
        scope[logs.SCOPE_KEY] = info
        echoed = (logs.HEADER, info.request_id.encode("ascii"))
        status = 0

        async def answering(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        started = time.perf_counter()
        answered = False  # by the fast path, which has no route object
        try:
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                await self._too_large(scope, receive, answering)
                return
            answered = await self._answer(scope, receive, answering)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"]
            # Read here, not returned: a route that raised has its template too.
            route = (
                scope["path"] if answered else str(getattr(scope.get("route"), "path", "unmatched"))
            )
            # One that raised before any answer began counts as the 500 the server sends.
            code = status or 500
            self.metrics.timed(route, method, code, seconds)
            if logs.ACCESS.isEnabledFor(logging.INFO):  # a cached lookup in logging
                logs.request(info, method, route, code, seconds)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request; True when the fast path answered it."""
        seen = 0
        max_bytes = self.max_bytes
        source = receive  # or, when the fast path declined, what it read replayed first

        async def limited() -> Message:
            nonlocal seen
            message = await source()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _TooLarge(max_bytes)
            return message

        try:
            fast = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
            if fast is not None:
                rest = await fastpath.serve(fast, self.max_bytes, scope, receive, send)
                if rest is None:
                    return True
                source = rest
            await self.app(scope, limited, send)
        except _TooLarge:
            # Only when the body was read outside a route (a route's exception
            # handlers answer it themselves, in the same shape).
            await self._too_large(scope, receive, send)
        return False

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Rendered like every other error, so a compatibility surface keeps its shape.
        response = errors.render(
            Request(scope), 413, "payload_too_large", str(_TooLarge(self.max_bytes).detail)
        )
        await response(scope, receive, send)


class _TooLarge(HTTPException):
    """The body went over the cap while being read (no Content-Length told us before).

    An ``HTTPException``, not a bare error: FastAPI reads a route's body inside
    a handler that turns any other exception into "error parsing the body",
    which is how a streamed 5 MB body became a 400/422 instead of this 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request bodies are limited to {max_bytes} bytes")
