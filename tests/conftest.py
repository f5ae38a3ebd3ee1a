"""Shared fixtures: a frozen clock and a quota over every backend.

Adding a backend means adding its name to ``BACKENDS`` and a way to make a
fresh store of it; the conformance suite then runs on it unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest

import tokenquota
from tokenquota import FrozenClock, Quota

if TYPE_CHECKING:
    from tests.replicas import Fleet
    from tests.services import PostgresSchemas

# Speed is measured in bench/, never asserted by a test, and hypothesis's per-example
# deadline is such an assertion: with two xdist workers on two cores, a property
# must not fail (or turn "flaky") because one example waited for a CPU.
hypothesis.settings.register_profile("tokenquota", deadline=None)
hypothesis.settings.load_profile("tokenquota")

BACKENDS = ["memory", "sqlite", "postgres", "redis", "cluster"]
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday
REQUIRE_SERVICES = os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1"


def store_url(backend: str, tmp_path: Path, name: str = "quota.db") -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / name}"
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file as the migrations leave it, made once: a test's store starts as its copy."""
    from tokenquota.storage.sql.tx import Database

    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    Database(f"sqlite:///{path}").close()
    return path


def migrated_sqlite(template: Path, path: Path) -> str:
    """The URL of a new SQLite store at ``path``, migrated (a copy of ``template``)."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session", autouse=True)
def _shared_for_the_run() -> Iterator[None]:
    """What tests share for the whole run, shut at its very end.

    The uvicorn servers tests/live.py keeps between tests, then this process's
    own PostgreSQL database (tests/services.py).
    """
    yield
    live = sys.modules.get("tests.live")
    if live is not None:
        live.close_all()
    services = sys.modules.get("tests.services")
    if services is not None:
        services.drop_own_databases()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


QuotaFactory = Callable[..., Quota]


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[PostgresSchemas]:
    """This session's (this xdist worker's) migrated schemas; see ``PostgresSchemas``."""
    from tests.services import PostgresSchemas, require_postgres

    schemas = PostgresSchemas(require_postgres())
    try:
        yield schemas
    finally:
        schemas.close()


@pytest.fixture
def postgres_url(postgres_schemas: PostgresSchemas) -> Iterator[str]:
    """A URL whose connections live in a migrated schema of the machine's PostgreSQL.

    The schema holds no data but what the migrations put there, and no other
    store of the run uses it while this test runs.
    """
    url = postgres_schemas.take()
    try:
        yield url
    finally:
        postgres_schemas.give_back(url)


@pytest.fixture
def empty_postgres_url(postgres_schemas: PostgresSchemas) -> str:
    """A URL on a schema with no tables at all: for tests of migrating an empty database."""
    return postgres_schemas.empty()


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
    if backend in ("postgres", "redis", "cluster"):
        url = request.getfixturevalue("postgres_url")
    elif backend == "sqlite":
        url = migrated_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "quota.db")
    else:
        url = store_url(backend, tmp_path)
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
