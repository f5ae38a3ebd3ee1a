"""A small HTTP/1.1 load generator: N keep-alive connections, closed loop, fixed duration.

There is no wrk on the session machine, so the bench brings its own. Each
connection sends one request, reads the whole answer, then sends the next
(no pipelining): the rate is what N clients each waiting for their answer
get, and each request's latency is recorded. Connections are spread over 1
or more processes (asyncio on uvloop when it is installed); they connect
first, meet at a barrier, run ``warmup`` seconds untimed, then count every
request that both started and finished inside the next ``duration`` seconds.

Whatever this driver can or cannot push, the bench measures the floor (a
bare FastAPI endpoint) with the same driver in the same run, so the ratio
is fair; ``client_cpu`` says how busy the driver itself was (near 1.0 per
process means the driver, not the server, set the pace). Run it alone:

    python -m bench.loadgen http://127.0.0.1:8000/v1/consume --body '{...}' -H 'X-API-Key: k'
    python -m bench.loadgen --ceiling --processes 2   # against a server that does nothing
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from bench.common import Figures

ROOT = Path(__file__).resolve().parent.parent
CONNECT_SECONDS = 30.0  # a child that cannot connect in this time fails the row
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class LoadResult:
    figures: Figures  # requests per second over the window; per-request p50 and p99
    errors: int  # answers other than 200, and broken connections
    first_error: str | None
    client_cpu: float  # the driver's CPU seconds per wall second, summed over its processes
    connections: int
    processes: int
    duration: float
    # Timed answers per server process, largest first, told apart by the first 16
    # characters of the X-Request-ID that ``serve`` sends (its process's own part;
    # empty when the server sends none): with several workers, how the load was split.
    by_server: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What one child process needs (sent to it as JSON)."""

    host: str
    port: int
    request: bytes
    connections: int
    warmup: float
    duration: float


def build_request(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[str, int, bytes]:
    """Host, port and the bytes of one ``POST`` with a JSON body, built once."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"an http:// URL is needed, not {url!r}")
    port = parts.port or 80
    path = parts.path or "/"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.hostname}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """The status of one whole answer, whether the connection stays open, and which
    server process answered (see ``LoadResult.by_server``; empty when not told)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = b"\r\nconnection: close" not in lower
    server = b""
    at = lower.find(b"\r\nx-request-id: ")
    if at >= 0:
        server = head[at + 16 : at + 32]
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
        if length:
            await reader.readexactly(length)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    else:
        keep = False  # the body runs to the end of the connection
        await reader.read()
    return status, keep, server


class Worker:
    """The connections of one process and what they saw."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.latencies = array("d")
        self.by_server: Counter[str] = Counter()
        self.errors = 0
        self.first_error: str | None = None
        self.start = 0.0
        self.end = 0.0

    def error(self, text: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = text

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(self.plan.host, self.plan.port, limit=MAX_HEAD),
            CONNECT_SECONDS,
        )

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = self.plan.request
        clock = time.monotonic
        record = self.latencies.append
        while True:
            t0 = clock()
            if t0 >= self.end:
                break
            try:
                writer.write(request)
                status, keep, server = await read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.error(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await self.connect()
                continue
            t1 = clock()
            if status != 200:
                self.error(f"status {status}")
            elif t0 >= self.start and t1 <= self.end:
                record(t1 - t0)
                if server:
                    self.by_server[server.decode("latin-1")] += 1
            if not keep:
                writer.close()
                reader, writer = await self.connect()
        writer.close()

    async def run(self, go: Callable[[], object]) -> float:
        """Connect, wait for ``go`` (every process is connected), run; CPU seconds in the window."""
        streams = [await self.connect() for _ in range(self.plan.connections)]
        await asyncio.get_running_loop().run_in_executor(None, go)
        self.start = time.monotonic() + self.plan.warmup
        self.end = self.start + self.plan.duration
        tasks = [asyncio.create_task(self.connection(r, w)) for r, w in streams]
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        cpu0 = os.times()
        await asyncio.gather(*tasks)
        cpu1 = os.times()
        return (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)


def run_loop(main: Coroutine[Any, Any, float]) -> float:
    """uvloop when it is there (uvicorn[standard] brings it), else asyncio's own loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def child() -> None:
    """One process of the driver (``--child``), spoken to over its stdin and stdout.

    In: one JSON line, the Plan and a file for the latencies. Out: ``ready`` once
    connected; after ``go`` on stdin, one JSON line of counts. Plain pipes rather
    than multiprocessing, so nothing depends on how the parent's main module imports.
    """
    raw = json.loads(sys.stdin.readline())
    fields = {name: raw[name] for name in Plan.__dataclass_fields__}
    plan = Plan(**{**fields, "request": base64.b64decode(raw["request"])})
    worker = Worker(plan)

    def go() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the parent went away")

    cpu = run_loop(worker.run(go))
    # The latencies go through a file: a pipe once truncated a long line at its 64 KiB
    # buffer, as if the event loop had left stdout non-blocking.
    with open(raw["out"], "wb") as out:
        worker.latencies.tofile(out)
    os.set_blocking(sys.stdout.fileno(), True)
    answer = {
        "errors": worker.errors,
        "first_error": worker.first_error,
        "cpu": cpu,
        "by_server": dict(worker.by_server),
    }
    print(json.dumps(answer), flush=True)


def drive(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connections: int = 64,
    duration: float = 4.0,
    warmup: float = 1.0,
    processes: int = 1,
) -> LoadResult:
    """Load ``url`` with ``connections`` keep-alive connections spread over ``processes``."""
    host, port, request = build_request(url, body, headers)
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    command = [sys.executable, "-m", "bench.loadgen", "--child"]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loadgen")))
        procs = []
        for i, share in enumerate(shares):
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
            )
            stack.callback(reap, proc)
            procs.append(proc)
            plan = {
                "host": host,
                "port": port,
                "request": base64.b64encode(request).decode(),
                "connections": share,
                "warmup": warmup,
                "duration": duration,
                "out": str(tmp / f"latencies-{i}"),
            }
            talk(proc, json.dumps(plan))
        for proc in procs:
            expect(proc, "ready")
        for proc in procs:
            talk(proc, "go")
        answers = [json.loads(expect(proc, None)) for proc in procs]
        latencies = array("d")
        for i in range(len(procs)):
            latencies.frombytes((tmp / f"latencies-{i}").read_bytes())
    errors, first_error, cpu = 0, None, 0.0
    by_server: Counter[str] = Counter()
    for answer in answers:
        by_server.update(answer["by_server"])
        errors += answer["errors"]
        first_error = first_error or answer["first_error"]
        cpu += answer["cpu"]
    return LoadResult(
        Figures.of(latencies, duration),
        errors,
        first_error,
        cpu / duration,
        connections,
        processes,
        duration,
        tuple(sorted(by_server.values(), reverse=True)),
    )


def talk(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def expect(proc: subprocess.Popen[str], word: str | None) -> str:
    """The child's next line (``word`` if given); a child that died fails the row."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line or (word is not None and line != word):
        proc.wait(timeout=10)
        raise RuntimeError(f"a load generator process stopped (exit {proc.returncode}): {line}")
    return line


def reap(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# The ceiling check (--ceiling): what the driver reaches against a server that does
# nothing, so a floor far below it is known to be the server's limit, not the driver's.
FIXED_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n"
    b'{"allowed":true}'
)


class FixedAnswer(asyncio.Protocol):
    """Answers every whole request on the connection with FIXED_ANSWER, reading nothing."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(FIXED_ANSWER)


def fixed_server(port: int) -> None:
    """One process of the trivial server; several share the port (SO_REUSEPORT)."""

    async def serve() -> float:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        server = await asyncio.get_running_loop().create_server(FixedAnswer, sock=sock)
        async with server:
            await server.serve_forever()
        return 0.0

    run_loop(serve())


def ceiling(connections: int, duration: float, processes: int, servers: int = 2) -> LoadResult:
    """The driver against ``servers`` processes of the trivial server on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [sys.executable, "-m", "bench.loadgen", "--fixed-server", str(port)]
    procs = [subprocess.Popen(command, cwd=ROOT) for _ in range(servers)]
    try:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(0.5)  # the other processes bind too
        url = f"http://127.0.0.1:{port}/v1/consume"
        return drive(
            url,
            b"{}",
            {},
            connections=connections,
            duration=duration,
            processes=processes,
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="POST one JSON body over keep-alive connections.")
    parser.add_argument("url", nargs="?")
    parser.add_argument("--body", default='{"subject":"user:alice","amounts":{"tokens":10}}')
    parser.add_argument("-H", "--header", action="append", default=[], metavar="NAME: VALUE")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fixed-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="load a trivial 2-process server instead of URL: the driver's own ceiling",
    )
    args = parser.parse_args()
    if args.child:
        child()
        return
    if args.fixed_server:
        fixed_server(args.fixed_server)
        return
    if args.ceiling:
        report(ceiling(args.connections, args.duration, args.processes))
        return
    if args.url is None:
        parser.error("the URL to load is needed")
    headers = {
        name.strip(): value.strip() for name, _, value in (h.partition(":") for h in args.header)
    }
    report(
        drive(
            args.url,
            args.body.encode(),
            headers,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            processes=args.processes,
        )
    )


def report(result: LoadResult) -> None:
    f = result.figures
    print(
        f"{f.rate:,.0f} requests/s, p50 {f.p50:,.0f} µs, p99 {f.p99:,.0f} µs, "
        f"{f.calls} requests, {result.errors} errors"
        + (f" (first: {result.first_error})" if result.first_error else "")
        + f", driver CPU {result.client_cpu:.2f} s/s over {result.processes} process(es)"
        + (f", answers per server process {list(result.by_server)}" if result.by_server else "")
    )


if __name__ == "__main__":
    main()
