"""Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from tokenquota.api.schemas import ErrorOut, HealthOut, StatusOut
from tokenquota.domain.errors import StoreUnavailable
from tokenquota.http.auth import QuotaDep
from tokenquota.http.errors import error_response
from tokenquota.wire.version import VERSION

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthOut, summary="The process answers, and its version")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": VERSION}


@router.get(
    "/readyz",
    response_model=StatusOut,
    summary="The store can be reached",
    responses={503: {"model": ErrorOut}},
)
def readyz(quota: QuotaDep) -> JSONResponse:
    try:
        quota.store.ping()
    except StoreUnavailable as exc:
        return error_response(503, exc.code, exc.message)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    # On a thread: the live gauges read the spool and, on Redis, the streams.
    body = await anyio.to_thread.run_sync(state.metrics.exposition, getattr(state, "quota", None))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
