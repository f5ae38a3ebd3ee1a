"""The HTTP services the rows load: ``tokenquota serve`` and the bare FastAPI floor.

Both run as subprocesses on a free loopback port under uvicorn with the same
number of workers, httptools and uvloop (uvicorn's choice when installed) and
no access log (``serve``'s default; the bare endpoint has none either, so
the floor does not pay for a log line the service does not write) and each
worker listening on a socket of its own (``serve``'s way with several
workers, ``tokenquota.cli.workers``; uvicorn's own shares one socket, and the
first worker to wake could take all 64 connections), so the only difference
is the app.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import COMPANY_WINDOWS, LIMIT, USER_WINDOWS

SERVER_START_SECONDS = 60
WORKERS = 2
STARTED = "Application startup complete"  # uvicorn's line, once per worker
ROOT = Path(__file__).resolve().parent.parent


class ServerFailed(Exception):
    pass


@dataclass(frozen=True)
class Endpoint:
    """Where to send ``POST /v1/consume`` and with which headers."""

    url: str
    headers: dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tokenquota_command() -> list[str]:
    script = Path(sys.executable).parent / "tokenquota"
    if script.exists():
        return [str(script)]
    found = shutil.which("tokenquota")
    if found:
        return [found]
    return [sys.executable, "-c", "from tokenquota.cli import main; main()"]


@contextmanager
def process(
    command: list[str], env: dict[str, str], logs: Path, port: int, workers: int = WORKERS
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process logging to a file, healthy on ``/healthz`` with all its workers
    started; stopped at the end."""
    log_path = logs / f"serve-{port}.log"
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb"))
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        stack.callback(stop, proc)
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_path)
        wait_workers(proc, log_path, workers)
        yield proc


@contextmanager
def served(db: str, redis: str | None, logs: Path, workers: int = WORKERS) -> Iterator[Endpoint]:
    """``tokenquota serve --workers N``, set up in the bench's shape; a service key's endpoint."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin_key = secrets.token_urlsafe(24)
    command = [*tokenquota_command(), "serve", "--db", db, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    command += ["--redis", redis] if redis else []
    env = {**os.environ, "TOKENQUOTA_ADMIN_KEY": admin_key}
    with (
        process(command, env, logs, port, workers),
        httpx.Client(base_url=base, headers={"X-API-Key": admin_key}, timeout=30) as admin,
    ):
        setup = [
            ("PUT", "/v1/subjects/user:alice", {"parents": ["company:acme"]}),
            ("PUT", "/v1/subjects/user:alice/limits", limits(USER_WINDOWS)),
            ("PUT", "/v1/subjects/company:acme/limits", limits(COMPANY_WINDOWS)),
        ]
        for method, path, body in setup:
            admin.request(method, path, json=body).raise_for_status()
        created = admin.post("/v1/keys", json={"role": "service", "name": "bench"})
        created.raise_for_status()
        yield Endpoint(f"{base}/v1/consume", {"X-API-Key": created.json()["key"]})


@contextmanager
def bare(logs: Path, workers: int = WORKERS) -> Iterator[Endpoint]:
    """The bare FastAPI endpoint (bench/bare_app.py) under uvicorn, as ``serve`` runs it
    (its defaults: no access log, a socket per worker)."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_app", "--port", str(port)]
    command += ["--workers", str(workers)]
    with process(command, dict(os.environ), logs, port, workers):
        yield Endpoint(f"http://127.0.0.1:{port}/v1/consume", {})


def limits(windows: tuple[str, ...]) -> dict[str, object]:
    return {"limits": [{"metric": "tokens", "window": w, "limit": LIMIT} for w in windows]}


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise ServerFailed(f"exited with {proc.returncode}: " + " | ".join(tail))
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise ServerFailed(f"no answer on /healthz within {SERVER_START_SECONDS}s")


def wait_workers(proc: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    """Until every worker has started its app: /healthz answers as soon as one has,
    and the driver's 64 connections, made at once and kept, would all go to it."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while log.read_text(errors="replace").count(STARTED) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ServerFailed(f"fewer than {workers} workers started: see {log}")
        time.sleep(0.1)
    time.sleep(0.2)  # from its app's startup to listening: one await in uvicorn


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
