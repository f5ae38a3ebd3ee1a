"""External services for tests: skip with a reason locally, fail in CI.

CI sets TOKENQUOTA_REQUIRE_SERVICES=1; then a missing server is an error,
never a silent skip.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

REDIS_URL = os.environ.get("TOKENQUOTA_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKENQUOTA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> str:
    """This process's own database on the test PostgreSQL (see ``own_database``)."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to reach it means the same thing here
        if os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL is required (TOKENQUOTA_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return own_database(POSTGRES_URL)


@functools.cache
def own_database(base: str) -> str:
    """A database of this process's own beside ``base``'s, dropped when the process exits.

    Advisory locks are per database, and the store's global key (29809) is
    taken by every write: in a shared database the admin writes of one test
    stall the hot writes of every other test running at the same time, in
    another xdist worker or another checkout's run. A database per process
    keeps the tests of one run from waiting on another's. Where the role may
    not create databases, the tests share ``base``'s (still a schema per store).
    """
    import sqlalchemy as sa

    name = f"tqtest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.DBAPIError:
        return base  # e.g. no CREATEDB privilege
    finally:
        server.dispose()
    _created.append((base, name))
    atexit.register(_drop_database, base, name)  # if the run ends without its teardown
    return sa.make_url(base).set(database=name).render_as_string(hide_password=False)


_created: list[tuple[str, str]] = []


def drop_own_databases() -> None:
    """Drop what ``own_database`` made (at the end of the run: xdist workers may skip atexit)."""
    while _created:
        _drop_database(*_created.pop())
    own_database.cache_clear()


def _drop_database(base: str, name: str) -> None:
    import sqlalchemy as sa

    server = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            # FORCE ends the connections a test may have leaked (PostgreSQL 13 and later).
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


def schema_url(base: str, schema: str) -> str:
    """``base`` with its connections in ``schema``, and named after it.

    The name (``application_name``) lets ``PostgresSchemas`` find every
    connection a test left open on the schema and end it before reuse.
    """
    return f"{base}?options=-csearch_path%3D{schema}&application_name={schema}"


class PostgresSchemas:
    """Migrated PostgreSQL schemas for tests, one per store, reset and reused.

    Migrating a schema takes about as long as a short test (Alembic runs six
    migrations), and most tests need one, some several. So one session (one
    xdist worker) migrates a template once and a schema per store in use at a
    time; a schema given back is reset to exactly what the migrations left
    (every connection still on it ended, renamed so that no URL of the last
    test reaches it, rows deleted, the template's rows copied back, sequences
    restarted) and handed to the next store. A schema that cannot be reset so
    (its tables or migration version changed, a lock held) is dropped instead.
    tests/test_schema_pool.py checks that a reset schema and a freshly migrated
    one cannot be told apart.
    """

    def __init__(self, base: str) -> None:
        import sqlalchemy as sa

        self.base = base
        self.admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
        self.used: list[str] = []  # given back, reset when taken again
        self.made: set[str] = set()
        self.template = self._migrated()
        with self.admin.connect() as conn:
            self.tables = self._tables(conn, self.template)
            self.version = self._version(conn, self.template)
            self.seeded = [
                name
                for name in self.tables
                if conn.execute(
                    sa.text(f'SELECT EXISTS (SELECT 1 FROM "{self.template}"."{name}")')
                ).scalar()
            ]
            self.sequences = conn.execute(
                sa.text(
                    "SELECT sequencename, start_value, last_value FROM pg_sequences"
                    " WHERE schemaname = :s ORDER BY sequencename"
                ),
                {"s": self.template},
            ).all()

    def take(self) -> str:
        """A migrated schema no other store uses, as a URL."""
        while self.used:
            old = self.used.pop()
            try:
                schema = self._reset(old)
            except Exception:  # whatever it is, the schema is not reused
                self._drop(old)
            else:
                return schema_url(self.base, schema)
        return schema_url(self.base, self._migrated())

    def give_back(self, url: str) -> None:
        """Mark the schema free; it is reset when next taken.

        Not now: the test's other fixtures may still be tearing down (a replica
        process, stopped after this fixture, may write once more). By the next
        ``take`` every fixture of the test that used it is gone.
        """
        self.used.append(url.rsplit("application_name=", 1)[1])

    def empty(self) -> str:
        """A schema with nothing in it (dropped by ``close``), for tests of migrating."""
        return schema_url(self.base, self._create())

    def close(self) -> None:
        for schema in list(self.made):
            self._drop(schema)
        self.admin.dispose()

    def _create(self) -> str:
        import sqlalchemy as sa

        schema = f"tq_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        self.made.add(schema)
        return schema

    def _migrated(self) -> str:
        from tokenquota.storage.sql.tx import Database

        schema = self._create()
        Database(schema_url(self.base, schema)).close()
        return schema

    def _reset(self, old: str) -> str:
        """``old`` as the migrations left it, under a new name; returns the name."""
        import sqlalchemy as sa

        schema = f"tq_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as conn:
            # Nothing of the last test may reach the schema again: its connections
            # end, and the new name is in no URL it had (a pool would reconnect).
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :s AND pid <> pg_backend_pid()"
                ),
                {"s": old},
            )
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'ALTER SCHEMA "{old}" RENAME TO "{schema}"'))
            if self._tables(conn, schema) != self.tables:
                raise RuntimeError(f"{old}: its tables changed")
            if self._version(conn, schema) != self.version:
                raise RuntimeError(f"{old}: its migration version changed")
            for name in self.tables:
                if name != "alembic_version":
                    conn.execute(sa.text(f'DELETE FROM "{schema}"."{name}"'))
            for name in reversed(self.tables):
                if name in self.seeded and name != "alembic_version":
                    conn.execute(
                        sa.text(
                            f'INSERT INTO "{schema}"."{name}"'
                            f' SELECT * FROM "{self.template}"."{name}"'
                        )
                    )
            for name, start, last in self.sequences:
                conn.execute(
                    sa.text("SELECT setval(CAST(:q AS regclass), :v, :called)"),
                    {
                        "q": f'"{schema}"."{name}"',
                        "v": start if last is None else last,
                        "called": last is not None,
                    },
                )
        self.made.discard(old)
        self.made.add(schema)
        return schema

    def _drop(self, schema: str) -> None:
        import sqlalchemy as sa

        with self.admin.begin() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :s AND pid <> pg_backend_pid()"
                ),
                {"s": schema},
            )
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self.made.discard(schema)
        if schema in self.used:
            self.used.remove(schema)

    @staticmethod
    def _tables(conn: Any, schema: str) -> list[str]:
        """The schema's tables, those that others' foreign keys point to last."""
        import sqlalchemy as sa

        names = sorted(
            conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
            ).scalars()
        )
        edges = conn.execute(
            sa.text(
                "SELECT child.relname, parent.relname FROM pg_constraint c"
                " JOIN pg_class child ON child.oid = c.conrelid"
                " JOIN pg_class parent ON parent.oid = c.confrelid"
                " JOIN pg_namespace n ON n.oid = child.relnamespace"
                " WHERE c.contype = 'f' AND n.nspname = :s AND c.conrelid <> c.confrelid"
            ),
            {"s": schema},
        ).all()
        # Deleting children first keeps every foreign key satisfied at each step.
        ordered: list[str] = []
        left = set(names)
        while left:
            ready = sorted(n for n in left if not any(p == n and c in left for c, p in edges))
            if not ready:
                raise RuntimeError(f"{schema}: foreign keys in a cycle")
            ordered += ready
            left -= set(ready)
        return ordered

    @staticmethod
    def _version(conn: Any, schema: str) -> list[str]:
        import sqlalchemy as sa

        return sorted(
            conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalars()
        )


def _unreachable(what: str, url: str, exc: Exception) -> NoReturn:
    if os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (TOKENQUOTA_REQUIRE_SERVICES=1): {exc}")
    pytest.skip(f"{what} not reachable at {url}: {exc}")


def require_redis() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        _unreachable("Redis", REDIS_URL, exc)
    return REDIS_URL


def fresh_redis_prefix() -> Iterator[str]:
    """The machine's Redis under a key prefix of its own, deleted afterwards."""
    import redis

    base = require_redis()
    prefix = f"tqt{uuid.uuid4().hex[:12]}"
    yield f"{base}?prefix={prefix}"
    client = redis.Redis.from_url(base)
    names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(names), 500):
        client.unlink(*names[start : start + 500])
    client.close()


CREATE_FLAGS = ("--cluster-replicas", "0", "--cluster-yes")


def start_redis_cluster(workdir: Path, nodes: int = 3) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A real Redis Cluster on loopback: ``nodes`` primaries sharing the 16384 slots.

    Returns a seed URL and the processes (the caller stops them). Raises
    FileNotFoundError without the Redis binaries; bench/ starts one too.
    """
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        raise FileNotFoundError("redis-server and redis-cli are not on PATH")
    ports = [cluster_port() for _ in range(nodes)]
    procs = [_start_node(server, port, workdir / str(port)) for port in ports]
    try:
        for port in ports:
            _wait(functools.partial(_node_answers, port))
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), *CREATE_FLAGS],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            _wait(functools.partial(_cluster_ok, port))
    except BaseException:
        stop(procs)
        raise
    return f"redis://127.0.0.1:{ports[0]}", procs


def require_redis_cluster(workdir: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """``start_redis_cluster``, skipped (or failed in CI) without the Redis binaries."""
    try:
        return start_redis_cluster(workdir)
    except FileNotFoundError as exc:
        _unreachable("redis-server and redis-cli", "PATH", exc)


def _start_node(server: str, port: int, home: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
    args += ["--cluster-config-file", str(home / "nodes.conf"), "--dir", str(home)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(home / "redis.log")]
    return subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _node_answers(port: int) -> bool:
    import redis

    with redis.Redis(port=port) as client:
        return bool(client.ping())


def _cluster_ok(port: int) -> bool:
    import redis

    with redis.Redis(port=port, decode_responses=True) as client:
        info: dict[str, str] = client.execute_command("CLUSTER INFO")
    return info.get("cluster_state") == "ok"


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def _wait(ready: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("the Redis cluster did not come up")
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fresh_cluster_prefix(seed: str) -> Iterator[str]:
    """A prefix of its own on the test cluster, its keys deleted afterwards."""
    from redis.cluster import RedisCluster

    prefix = f"tqt{uuid.uuid4().hex[:12]}"
    yield f"{seed}?prefix={prefix}"
    client = RedisCluster.from_url(seed)
    for name in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.unlink(name)
    client.close()
