"""Where one ``POST /v1/consume`` spends its CPU in-process, on ``memory://``, without a socket.

Run with ``.venv/bin/python -m bench.profile_http`` (``PYTHONPATH=<tree>/src``
to measure another tree; ``--profile`` adds a cProfile of the app's side).
The app is ``create_app`` as ``serve`` builds it, its lifespan run, set up in
the bench's shape (``user:alice`` with tokens limits per minute, hour and day
in ``company:acme`` with one per month, every call admitted, a frozen clock),
and driven by calling its ASGI callable with the scope, receive and send a
server would give it: the body of bench/common.py's ``CONSUME_BODY`` under a
service key (bench/servers.py's), one request at a time on one event loop.

It prints, each the best of ROUNDS rounds of process CPU time per request (the
rows take turns in each round):

- the whole request through the app (the event loop's side and the decision
  lane's thread);
- the bare FastAPI endpoint the HTTP rows are measured against
  (bench/bare_app.py), driven the same way;
- the route's handler alone (``metering.decide_consume``, called directly:
  parse the subject, the consume, the answer) and the answer alone
  (``metering.decision_response`` of one decision, rendered to bytes);

then, with ``--profile``, the share of the app's CPU each part takes under
cProfile. CPU time, not wall: on a shared machine others' processes stretch
it much less. Compare within one run; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from bench.bare_app import create as create_bare
from bench.common import COMPANY_WINDOWS, CONSUME_BODY, LIMIT, USER_WINDOWS
from tokenquota import FrozenClock
from tokenquota.api.app import create_app
from tokenquota.api.routes import metering
from tokenquota.api.schemas import ConsumeIn
from tokenquota.settings import Settings

ROUNDS = 21
CALLS = 500
ADMIN_KEY = "profile-http-bootstrap-admin-key-0123456789"

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope_of(key: str | None) -> dict[str, Any]:
    """The scope uvicorn (httptools) builds for the bench's request."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(CONSUME_BODY)).encode()),
    ]
    if key is not None:
        headers.append((b"x-api-key", key.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/v1/consume",
        "raw_path": b"/v1/consume",
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


def requester(app: Asgi, key: str | None) -> Callable[[], Awaitable[bytes]]:
    """One request through ``app``; returns the body sent (the status is checked)."""
    template = scope_of(key)

    async def once() -> bytes:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": CONSUME_BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(template, headers=list(template["headers"])), receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"answered {sent[0]['status']}: {sent[1].get('body')!r}")
        return bytes(sent[1]["body"])

    return once


async def interleaved(
    rows: list[tuple[str, Callable[[], object], bool]],
) -> list[tuple[str, float]]:
    """Microseconds of process CPU per call of each row (its callable, and whether it
    returns an awaitable): the best of ROUNDS rounds, the rows taking turns within
    each round, so that a busy moment of the machine weighs on all of them alike."""
    best = {name: float("inf") for name, _, _ in rows}
    for _ in range(ROUNDS):
        for name, fn, awaited in rows:
            start = time.process_time()
            if awaited:
                for _ in range(CALLS):
                    await fn()  # type: ignore[misc]
            else:
                for _ in range(CALLS):
                    fn()
            best[name] = min(best[name], (time.process_time() - start) / CALLS)
    return [(name, best[name] * 1e6) for name, _, _ in rows]


async def measure(profile: bool) -> None:
    settings = Settings(db="memory://", admin_key=SecretStr(ADMIN_KEY))
    app = create_app(settings, clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
    bare = create_bare()
    async with app.router.lifespan_context(app), bare.router.lifespan_context(bare):
        quota = app.state.quota
        quota.set_parents("user:alice", ["company:acme"])
        for window in USER_WINDOWS:
            quota.set_limit("user:alice", "tokens", window, LIMIT)
        for window in COMPANY_WINDOWS:
            quota.set_limit("company:acme", "tokens", window, LIMIT)
        _, key = quota.create_key("service", name="bench")
        service = quota.authenticate(key)
        ours = requester(app, key)
        floor = requester(bare, None)
        for _ in range(200):
            await ours()
            await floor()

        # The handler and the answer alone, on this thread, with a request as the route has it.
        from starlette.requests import Request

        request = Request(scope_of(key) | {"app": app})
        body = ConsumeIn.model_validate_json(CONSUME_BODY)

        def handler() -> object:
            return metering.decide_consume(body, request, service)

        decision = quota.consume("user:alice", tokens=10)

        def answer() -> bytes:
            response = metering.decision_response(request, decision, "consume", service)
            return bytes(response.body)

        def fresh_answer() -> bytes:  # a new (deferred) decision each time, as the route has
            fresh = quota.consume("user:alice", tokens=10)
            return bytes(metering.decision_response(request, fresh, "consume", service).body)

        def consume_only() -> object:
            return quota.consume("user:alice", tokens=10)

        rows = await interleaved(
            [
                ("request through the app", ours, True),
                ("bare FastAPI endpoint (the floor)", floor, True),
                ("handler alone (decide_consume)", handler, False),
                ("consume alone (Quota.consume)", consume_only, False),
                ("consume + answer (decision_response)", fresh_answer, False),
                ("answer of a built decision", answer, False),
            ]
        )
        width = max(len(name) for name, _ in rows)
        print(f"{'CPU per request, best of ' + str(ROUNDS):{width}}  us")
        for name, us in rows:
            print(f"{name:{width}}  {us:7.1f}")
        print(f"{'ratio app / floor':{width}}  {rows[0][1] / rows[1][1]:7.2f}")
        if profile:
            print("\n== the event loop's side of a request (the lane's thread is not profiled)")
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(2_000):
                await ours()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            print("== the handler (decide_consume), as the lane's thread runs it")
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(2_000):
                handler()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="then a cProfile of the app")
    args = parser.parse_args()
    asyncio.run(measure(args.profile))


if __name__ == "__main__":
    main()
