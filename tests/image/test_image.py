"""The container image: the repository's Dockerfile, built and run as a user would.

No image registry answers from the machines this runs on, so the image is built by
scripts/image/build.sh with podman on a Debian bookworm base made here by
debootstrap, with the wheels prepared on the host and no network inside the build
(docs/deploy.md says how that differs from the published python:3.11-slim base).

It takes minutes the first time and a whole CPU while it builds, so it runs only
under `make image-test` (TOKENQUOTA_IMAGE_TEST=1), which .ci/run calls after
`make test`. Without podman (and no way to install it) it skips with the reason,
and fails under TOKENQUOTA_REQUIRE_SERVICES=1 as the other services do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from tests.services import fresh_redis_prefix, require_postgres

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "image"
TAG = os.environ.get("TOKENQUOTA_IMAGE_TAG", "localhost/tokenquota:test")
BUILD_TIMEOUT_SECONDS = 1_800.0
START_TIMEOUT_SECONDS = 90.0
TOOLS_ABSENT = 3  # tools.sh: podman is missing and could not be installed

pytestmark = pytest.mark.skipif(
    os.environ.get("TOKENQUOTA_IMAGE_TEST") != "1",
    reason="builds a container image (minutes): run `make image-test`",
)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1":
        pytest.fail(f"the image test needs podman (TOKENQUOTA_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(f"the image test needs podman: {reason}")


def _podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    # The wrapper picks the runtime and resource limits this machine allows.
    return subprocess.run(
        [SCRIPTS / "podman.sh", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def image() -> str:
    tools = subprocess.run(
        [SCRIPTS / "tools.sh"], capture_output=True, text=True, timeout=900, check=False
    )
    if tools.returncode == TOOLS_ABSENT:
        _unavailable(tools.stderr.strip())
    assert tools.returncode == 0, tools.stderr
    build = subprocess.run(
        [SCRIPTS / "build.sh", TAG],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-4_000:]
    return TAG


@dataclass
class Running:
    """One container of the image, its published port and its /data volume."""

    name: str
    volume: str
    url: str

    def exec(self, *args: str) -> str:
        done = _podman("exec", self.name, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            state = _podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = _podman("logs", self.name)
                pytest.fail(f"the container is {state}, not serving:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.25)


def _run(image: str, volume: str, env: dict[str, str] | None = None) -> Running:
    """Start the image on ``volume``: its port published on loopback, or, given
    ``env``, on the host's network (to reach the host's PostgreSQL and Redis) at a
    free loopback port of its own."""
    name = f"tokenquota-test-{uuid.uuid4().hex[:10]}"
    port = _free_port()
    if env is None:
        where = ["--publish", f"127.0.0.1:{port}:8000"]
        command: list[str] = []
    else:
        env = {**env, "TOKENQUOTA_PORT": str(port)}
        where = ["--network", "host", *(f"--env={k}={v}" for k, v in env.items())]
        command = ["serve", "--host", "127.0.0.1"]
    started = _podman(
        "run", "--detach", "--name", name, *where, "--volume", f"{volume}:/data", image, *command
    )
    assert started.returncode == 0, started.stderr
    return Running(name=name, volume=volume, url=f"http://127.0.0.1:{port}")


@pytest.fixture
def volume(image: str) -> Iterator[str]:
    name = f"tokenquota-test-{uuid.uuid4().hex[:10]}"
    yield name
    _podman("volume", "rm", "--force", name)


@pytest.fixture
def containers(image: str, volume: str) -> Iterator[list[Running]]:
    """Containers the test starts, removed with their volumes afterwards."""
    started: list[Running] = []
    yield started
    for running in started:
        _podman("rm", "--force", "--time", "5", running.name)
        _podman("volume", "rm", "--force", running.volume)


def _stop(running: Running) -> None:
    """Stop as an orchestrator would (SIGTERM), and require a clean exit."""
    stopped = _podman("stop", "--time", "20", running.name)
    assert stopped.returncode == 0, stopped.stderr
    code = _podman("inspect", "--format", "{{.State.ExitCode}}", running.name).stdout.strip()
    assert code == "0", _podman("logs", running.name).stderr


def test_the_image_serves_health_and_a_consume(
    image: str, volume: str, containers: list[Running]
) -> None:
    first = _run(image, volume)
    containers.append(first)
    first.wait_healthy()

    # The image's own HEALTHCHECK (a Python one-liner, no curl in a slim image).
    health = _podman("healthcheck", "run", first.name)
    assert health.returncode == 0, health.stdout + health.stderr
    # Not root, and the SQLite store is in the volume.
    assert first.exec("id", "-u") == "10001"
    assert "tokenquota.db" in first.exec("ls", "/data").split()

    admin = first.exec("tokenquota", "keys", "create", "--role", "admin", "--quiet")
    service = first.exec("tokenquota", "keys", "create", "--role", "service", "--quiet")
    with httpx.Client(base_url=first.url, timeout=10.0) as http:
        limits = http.put(
            "/v1/subjects/user:alice/limits",
            headers={"Authorization": f"Bearer {admin}"},
            json={"limits": [{"metric": "tokens", "window": "day", "limit": 1000}]},
        )
        assert limits.status_code == 200, limits.text
        spent = http.post(
            "/v1/consume",
            headers={"X-API-Key": service},
            json={"subject": "user:alice", "amounts": {"tokens": 600}, "idempotency_key": "r1"},
        )
        assert spent.status_code == 200, spent.text
        assert spent.json()["allowed"] is True
        assert spent.headers["RateLimit-Remaining"] == "400"
    _stop(first)

    # A new container on the same volume: the keys, the limit and the spend are kept.
    second = _run(image, volume)
    containers.append(second)
    second.wait_healthy()
    with httpx.Client(base_url=second.url, timeout=10.0) as http:
        over = http.post(
            "/v1/consume",
            headers={"X-API-Key": service},
            json={"subject": "user:alice", "amounts": {"tokens": 500}},
        )
        assert over.status_code == 429, over.text
    _stop(second)


@pytest.fixture
def redis_url() -> Iterator[str]:
    yield from fresh_redis_prefix()


def test_two_replicas_share_postgresql_and_redis(
    image: str, volume: str, containers: list[Running], redis_url: str
) -> None:
    """compose.yaml's shape on the host's own servers: two replicas of the image on
    one (new, so both migrate it at once) PostgreSQL database and one Redis keyspace;
    what one admits, the other counts."""
    # The plain postgresql:// scheme compose.yaml uses: the image's SQLAlchemy
    # must pick psycopg 3 for it by itself.
    database = require_postgres().replace("postgresql+psycopg://", "postgresql://", 1)
    env = {"TOKENQUOTA_DB": database, "TOKENQUOTA_REDIS": redis_url}
    replicas = [_run(image, volume, env), _run(image, f"{volume}-2", env)]
    containers.extend(replicas)
    for replica in replicas:
        replica.wait_healthy()
    admin = replicas[0].exec("tokenquota", "keys", "create", "--role", "admin", "--quiet")
    service = replicas[1].exec("tokenquota", "keys", "create", "--role", "service", "--quiet")
    with httpx.Client(timeout=10.0) as http:
        limits = http.put(
            f"{replicas[1].url}/v1/subjects/company:acme/limits",
            headers={"Authorization": f"Bearer {admin}"},
            json={"limits": [{"metric": "tokens", "window": "day", "limit": 1000}]},
        )
        assert limits.status_code == 200, limits.text
        body = {"subject": "company:acme", "amounts": {"tokens": 600}}
        first = http.post(
            f"{replicas[0].url}/v1/consume", headers={"X-API-Key": service}, json=body
        )
        assert first.status_code == 200, first.text
        second = http.post(
            f"{replicas[1].url}/v1/consume", headers={"X-API-Key": service}, json=body
        )
        assert second.status_code == 429, second.text
    for replica in replicas:
        _stop(replica)
