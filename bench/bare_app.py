"""The HTTP floor: a bare FastAPI ``async def`` endpoint parsing the consume body.

Served by uvicorn with the same workers and defaults as ``tokenquota serve``
(bench/servers.py), and driven by the same load generator, so the HTTP rows'
ratios price what tokenquota adds to the cheapest FastAPI route that reads
the same JSON: authentication, the decision, the store, the answer. With
several workers it is served as ``serve`` serves, each worker on a socket of
its own (``tokenquota.cli.workers``), so the floor's connections are split
by the kernel as the service's are, not by which worker wakes first:

    python -m bench.bare_app --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from tokenquota.cli.workers import Workers, reuse_port

BACKLOG = 2048  # as ``serve`` listens (cli/serve.py, LISTEN_BACKLOG)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = uvicorn.Config(
        "bench.bare_app:create",
        factory=True,
        workers=args.workers,
        access_log=False,
        loop="auto",
        http="auto",
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    if args.workers == 1:
        sock.listen(BACKLOG)
        uvicorn.Server(config).run(sockets=[sock])
        return
    Workers(config, reuse_port(sock, args.workers, BACKLOG), BACKLOG).run()


if __name__ == "__main__":
    main()
