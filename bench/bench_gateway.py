"""What the gateway adds to a model call: p50 and p99 per request, against the upstream alone.

Run with ``make bench-gateway``. Prints one table and asserts nothing. The
upstream is the tests' stand-in model server (tests/gateway/upstream.py), served
in this process; the gateway is a real ``tokenquota serve --upstream`` process on
SQLite. One client calls each, one request at a time, alternating rounds of
direct and gateway calls so both see the same machine: non-streamed chat, and
streamed chat read to its end. The added latency is the gateway's percentile
minus the direct one: counting the prompt, a lease and a reservation before
the call, the commit and the lease's release after, and the extra hop. The
round trip of ``GET /healthz`` on the gateway's own server is measured beside
them: the hop to a ``tokenquota serve`` process, without any gateway work.

``--requests N`` sets the calls per cell and round (default 200); ``--db URL`` the
gateway's store (default a fresh SQLite file; ``memory://`` shows the gateway's
own cost without a store's writes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.table import Table
from tests.gateway.upstream import TestUpstream
from tests.live import LiveServer
from tests.replicas import free_port

ADMIN_KEY = "bench-gateway-admin-key-0123456789abcdef"
ROUNDS = 2
START_TIMEOUT_SECONDS = 60.0
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name four Greek letters, please."},
    ],
    "max_tokens": 16,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(client: httpx.Client, url: str, stream: bool, n: int) -> list[float]:
    body = {**BODY, "stream": stream}
    out = []
    for _ in range(n):
        started = time.perf_counter()
        if url.endswith("/healthz"):
            answer = client.get(url)
        elif stream:
            with client.stream("POST", url, json=body) as answer:
                for _ in answer.iter_bytes():
                    pass
        else:
            answer = client.post(url, json=body)
        assert answer.status_code == 200, answer.status_code
        out.append((time.perf_counter() - started) * 1000)
    return out


def start_gateway(
    upstream_url: str, workdir: Path, db: str | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENQUOTA_")}
    env["TOKENQUOTA_ADMIN_KEY"] = ADMIN_KEY
    script = Path(sys.executable).with_name("tokenquota")
    process = subprocess.Popen(
        [
            str(script),
            "serve",
            "--port",
            str(port),
            "--db",
            db or f"sqlite:///{workdir / 'bench.db'}",
            "--upstream",
            f"local={upstream_url}",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the gateway did not start")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    upstream = TestUpstream()
    served = LiveServer(upstream.app)
    with tempfile.TemporaryDirectory() as workdir:
        process, gateway = start_gateway(f"{served.url}/v1", Path(workdir), args.db)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-TokenQuota-Subject": "user:bench"}
        try:
            with httpx.Client(timeout=30, headers=headers) as client:
                targets = {
                    "direct": f"{served.url}/v1/chat/completions",
                    "gateway": f"{gateway}/openai/v1/chat/completions",
                    "hop": f"{gateway}/healthz",
                }
                samples: dict[tuple[str, bool], list[float]] = {}
                for stream in (False, True):
                    for url in targets.values():
                        timed(client, url, stream, 20)  # warm: connections, caches, encodings
                    for _ in range(ROUNDS):
                        for name, url in targets.items():
                            got = timed(client, url, stream, args.requests)
                            samples.setdefault((name, stream), []).extend(got)
        finally:
            process.terminate()
            process.wait(timeout=20)
            served.stop()
    table = Table(title="gateway: added latency per request (ms)", box=box.SIMPLE)
    for column in ("call", "direct p50", "direct p99", "gateway p50", "gateway p99"):
        table.add_column(column, justify="right")
    table.add_column("added p50", justify="right")
    table.add_column("added p99", justify="right")
    hop = samples[("hop", False)] + samples[("hop", True)]
    h50, h99 = percentile(hop, 0.5), percentile(hop, 0.99)
    table.add_row("hop (/healthz)", "", "", f"{h50:.2f}", f"{h99:.2f}", "", "")
    for stream in (False, True):
        direct = samples[("direct", stream)]
        through = samples[("gateway", stream)]
        d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
        g50, g99 = percentile(through, 0.5), percentile(through, 0.99)
        table.add_row(
            "chat, streamed" if stream else "chat",
            f"{d50:.2f}",
            f"{d99:.2f}",
            f"{g50:.2f}",
            f"{g99:.2f}",
            f"{g50 - d50:.2f}",
            f"{g99 - d99:.2f}",
        )
    Console().print(table)
    store = args.db or "SQLite"
    print(f"{args.requests * ROUNDS} calls per cell, one at a time; store {store}, one worker")


if __name__ == "__main__":
    main()
