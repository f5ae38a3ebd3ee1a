"""Shared fixtures: a frozen clock and a quota over every backend.

Adding a backend means adding its name to ``BACKENDS`` and a way to make a
fresh store of it; the conformance suite then runs on it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import tokenquota
from tokenquota import FrozenClock, Quota

if TYPE_CHECKING:
    from tests.replicas import Fleet

BACKENDS = ["memory", "sqlite", "postgres", "redis", "cluster"]
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday
REQUIRE_SERVICES = os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1"


def store_url(backend: str, tmp_path: Path, name: str = "quota.db") -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / name}"
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


QuotaFactory = Callable[..., Quota]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose connections live in a fresh schema of the machine's PostgreSQL."""
    import uuid

    import sqlalchemy as sa

    from tests.services import require_postgres

    base = require_postgres()
    schema = f"tq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL for the machine's Redis under a fresh key prefix, wiped afterwards."""
    from tests.services import fresh_redis_prefix

    yield from fresh_redis_prefix()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three local ``redis-server --cluster-enabled yes`` primaries, for the whole run."""
    from tests.services import require_redis_cluster, stop

    seed, procs = require_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield seed
    finally:
        stop(procs)


@pytest.fixture
def cluster_url(redis_cluster: str) -> Iterator[str]:
    from tests.services import fresh_cluster_prefix

    yield from fresh_cluster_prefix(redis_cluster)


@pytest.fixture
def make_quota(
    backend: str, tmp_path: Path, clock: FrozenClock, request: pytest.FixtureRequest
) -> Iterator[QuotaFactory]:
    """Opens quotas on ``backend``; "redis" and "cluster" sit beside PostgreSQL, as deployed."""
    opened: list[Quota] = []
    url = (
        request.getfixturevalue("postgres_url")
        if backend in ("postgres", "redis", "cluster")
        else store_url(backend, tmp_path)
    )
    redis = (
        request.getfixturevalue({"redis": "redis_url", "cluster": "cluster_url"}[backend])
        if backend in ("redis", "cluster")
        else None
    )

    def factory(**kwargs: Any) -> Quota:
        kwargs.setdefault("clock", clock)
        if redis is not None:
            kwargs.setdefault("redis", redis)
        quota = tokenquota.open(url, **kwargs)
        opened.append(quota)
        return quota

    yield factory
    for quota in opened:
        quota.close()


@pytest.fixture
def quota(make_quota: QuotaFactory) -> Quota:
    return make_quota()


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Replicas for one test: always stopped, and their output shown when the test failed."""
    failed_before = request.session.testsfailed
    from tests.replicas import Fleet

    started = Fleet(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
        # The call's report is logged before teardown runs, so a failure is counted by now.
        if request.session.testsfailed > failed_before:
            print(f"\nreplica output:\n{started.logs()}")
