"""The HTTP floor: a bare FastAPI ``async def`` endpoint parsing the consume body.

Served by uvicorn with the same workers and defaults as ``tokenquota serve``
(bench/servers.py), and driven by the same load generator, so the HTTP rows'
ratios price what tokenquota adds to the cheapest FastAPI route that reads
the same JSON: authentication, the decision, the store, the answer.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class ConsumeIn(BaseModel):
    subject: str
    amounts: dict[str, int]


def create() -> FastAPI:
    """The uvicorn factory (``bench.bare_app:create``), built in each worker."""
    app = FastAPI()

    @app.post("/v1/consume")
    async def consume(body: ConsumeIn) -> dict[str, object]:
        return {"allowed": True, "subject": body.subject}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
