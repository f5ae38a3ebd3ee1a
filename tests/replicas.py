"""Several ``tokenquota serve`` processes on one store, as a deployment runs them.

Used by tests/test_replicas.py. Each replica is a real process started from
the console script users run, on its own free port, in its own process group
(so a kill reaches it and anything it forks), with its output in a file: a
pipe nobody reads fills up and would stall the server, and the file is what
a failing test prints to show what the replicas said.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

SCRIPT = Path(sys.executable).with_name("tokenquota")
# The installed console script when there is one (what users run), else the same entry point.
TOKENQUOTA = (
    [str(SCRIPT)]
    if SCRIPT.exists()
    else [sys.executable, "-c", "from tokenquota.cli import main; main()"]
)
ADMIN_KEY = "replicas-test-admin-key-0123456789abcdef"
# Generous: three replicas start at once on a 2-core CI machine, each importing
# FastAPI and queueing for the migration lock.
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0
PORT_ATTEMPTS = 3
LOG_TAIL_CHARS = 20_000


def free_port() -> int:
    """A port nobody listens on now; the replica binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica_env() -> dict[str, str]:
    """The runner's environment without TOKENQUOTA_* that could leak in, plus the admin key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENQUOTA_")}
    env.update({"TOKENQUOTA_ADMIN_KEY": ADMIN_KEY, "TOKENQUOTA_ACTOR": "replicas-test"})
    return env


class Replica:
    """One ``tokenquota serve --port PORT ARGS`` process."""

    def __init__(self, name: str, args: Sequence[str], port: int, log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log_dir / f"{name}-{port}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*TOKENQUOTA, "serve", "--port", str(port), *self.args],
                cwd=log_dir,
                env=replica_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        """Whether /readyz answers 200: the process serves and reaches the store."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown, no goodbye, as a crashed host would."""
        # Only while unreaped: until we reap it (a zombie included) its id cannot be
        # reused, so the signal cannot reach a stranger's group.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not gone after STOP_TIMEOUT_SECONDS."""
        if self.alive():  # the same care as in kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        self.kill()  # also reaps it, and any worker left in the group


class Fleet:
    """The replicas one test started; the fixture stops every one of them, pass or fail."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Replica] = []

    def start(self, count: int, args: Sequence[str]) -> list[Replica]:
        """``count`` replicas with the same flags, started at once, each ready on return.

        On an empty database they race for the migration, as a deployment
        rolled out on one does; the tests' stores (tests/services.py) are
        migrated already, so there they only start side by side.
        """
        names = [f"replica{len(self.started) + i}" for i in range(count)]
        pending = [self._spawn(name, args, free_port()) for name in names]
        return [self._until_ready(replica) for replica in pending]

    def restart(self, replica: Replica) -> Replica:
        """The same replica again (same flags, same port) after it was killed or stopped."""
        replica.stop()
        return self._until_ready(self._spawn(replica.name, replica.args, replica.port))

    def stop_all(self) -> None:
        for replica in self.started:
            replica.stop()

    def logs(self) -> str:
        parts = []
        for replica in self.started:
            text = replica.output()
            if len(text) > LOG_TAIL_CHARS:
                text = "[...]\n" + text[-LOG_TAIL_CHARS:]
            state = "running" if replica.alive() else f"exit {replica.process.returncode}"
            parts.append(f"----- {replica.name} {replica.url} pid {replica.pid} ({state})\n{text}")
        return "\n".join(parts)

    def _spawn(self, name: str, args: Sequence[str], port: int) -> Replica:
        replica = Replica(name, args, port, self.log_dir)
        self.started.append(replica)
        return replica

    def _until_ready(self, replica: Replica) -> Replica:
        """Poll /readyz until it answers; a port taken meanwhile gets another port."""
        for _ in range(PORT_ATTEMPTS):
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if replica.ready():
                    return replica
                if not replica.alive():
                    break
                time.sleep(0.1)
            else:
                pytest.fail(
                    f"{replica.name} not ready in {START_TIMEOUT_SECONDS} s:\n{replica.output()}"
                )
            # free_port() cannot reserve the port; someone else may have bound it first.
            if "address already in use" not in replica.output().lower():
                pytest.fail(
                    f"{replica.name} exited with {replica.process.returncode}:\n{replica.output()}"
                )
            replica = self._spawn(replica.name, replica.args, free_port())
        pytest.fail(f"{replica.name}: no free port in {PORT_ATTEMPTS} attempts")


# reading what the replicas agreed on ----------------------------------------------
def client(url: str, key: str, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", httpx.Timeout(30, connect=5))
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, **kwargs)


def ledger(url: str, key: str, subject: str) -> list[dict[str, Any]]:
    """Every event charged to ``subject``, as the replica at ``url`` exports it."""
    with client(url, key) as http:
        response = http.get("/v1/events", params={"subject": subject, "format": "jsonl"})
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def used(url: str, key: str, subject: str) -> dict[tuple[str, str | None], int]:
    """(metric, window) -> used, for every limit of ``subject``, as that replica reports it."""
    with client(url, key) as http:
        response = http.get(f"/v1/subjects/{subject}/usage")
    assert response.status_code == 200, response.text
    return {(s["metric"], s["window"]): int(s["used"]) for s in response.json()["limits"]}


def stored_event_keys(db_url: str) -> Counter[str | None]:
    """Rows of the ``events`` table per idempotency key, read straight from the database.

    Not through the service: a duplicate row must show even if a read path
    were to fold it away.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT idempotency_key, COUNT(*) FROM events GROUP BY idempotency_key")
            ).all()
    finally:
        engine.dispose()
    return Counter({row[0]: int(row[1]) for row in rows})
