"""The FastAPI application, built by ``create_app(settings)``.

Route handlers that touch the store are plain ``def`` functions: FastAPI runs
them on a bounded thread pool (``Settings.threads``), so the event loop never
waits on storage. See docs/architecture.md for why the core is synchronous.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tokenquota
from tokenquota.api import errors
from tokenquota.api.metrics import Metrics
from tokenquota.api.routes import admin, grants, health, holds, metering, reads, resources
from tokenquota.domain.clock import Clock
from tokenquota.engine import Quota
from tokenquota.settings import Settings

ROUTERS = [
    metering.router,
    holds.router,
    reads.router,
    admin.router,
    resources.router,
    grants.router,
    health.router,
]

DESCRIPTION = """\
Quota and usage metering for AI features.

Authenticate with an API key in `Authorization: Bearer <key>`,
`Authorization: Token <key>` or `X-API-Key: <key>`. Errors always have the shape
`{"error": {"code", "message", "details"}}`; `details.field` names the field at
fault in a 422.
"""


def create_app(
    settings: Settings | None = None,
    *,
    quota: Quota | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the app. ``quota`` lets a caller share an open engine (tests, embedding)."""
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        opened = (
            quota if quota is not None else await anyio.to_thread.run_sync(_open, settings, clock)
        )
        app.state.quota = opened
        try:
            yield
        finally:
            if quota is None:
                await anyio.to_thread.run_sync(opened.close)

    app = FastAPI(
        title="tokenquota",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    app.state.metrics = Metrics()
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # Imported here: the surfaces use api.errors, so a module-level import would cycle.
    from tokenquota.compat import SURFACES

    for surface in SURFACES:
        app.include_router(surface.router)
        errors.register_surface(app, surface.PREFIXES, surface.render_error)
    app.add_middleware(Timing)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _open(settings: Settings, clock: Clock | None) -> Quota:
    return tokenquota.open(
        settings.db,
        redis=settings.redis,
        timezone=settings.timezone,
        strict_subjects=settings.strict_subjects,
        defaults=settings.default_rules(),
        clock=clock,
        on_store_error=settings.on_store_error,
        spool=settings.spool,
    )


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``, one per worker process.

    The serve command hands its resolved settings over in the environment.
    """
    packed = os.environ.get("TOKENQUOTA_SETTINGS_JSON")
    settings = Settings.model_validate_json(packed) if packed else Settings.load()
    return create_app(settings)


class BodyLimit:
    """Refuse request bodies over the cap with 413, before any of it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Rendered like every other error, so a compatibility surface keeps its shape.
        response = errors.render(
            Request(scope),
            413,
            "payload_too_large",
            f"request bodies are limited to {self.max_bytes} bytes",
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class Timing:
    """Request latency per route template, for /metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            app = scope["app"]
            app.state.metrics.latency.labels(template, scope["method"]).observe(
                time.perf_counter() - started
            )
