"""The stores the rows run on: throwaway PostgreSQL schemas, Redis key prefixes, a cluster.

Each maker yields None (and appends the reason to ``notes``) when its server
is not there, so the rows that need it are left out instead of failing the run.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import POSTGRES, REDIS, one_line


def postgres_url(schema: str) -> str:
    """The store URL tokenquota opens: psycopg 3, with its own schema on the search path."""
    driver = "postgresql+psycopg:" + POSTGRES.partition(":")[2]
    return f"{driver}?options={quote(f'-csearch_path={schema}', safe='')}"


def redis_url(prefix: str) -> str:
    return f"{REDIS}?prefix={prefix}"


def redis_client() -> Any:
    """A client with the settings the Redis backend uses (storage/redis/store.py)."""
    import redis

    return redis.Redis.from_url(REDIS, socket_timeout=10, socket_connect_timeout=5)


@contextmanager
def postgres_schemas(notes: list[str]) -> Iterator[Callable[[], str] | None]:
    """A maker of throwaway schemas on the local PostgreSQL (dropped at the end), or None."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        notes.append(f"PostgreSQL not reachable at {POSTGRES} ({one_line(exc)}): rows left out")
        yield None
        return
    made: list[str] = []

    def fresh() -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE SCHEMA "{name}"')
        made.append(name)
        return name

    with admin:
        others = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
        if others and others[0]:
            notes.append(
                f"{others[0]} other sessions were on the PostgreSQL database at the start: its"
                " rows are noisy (tokenquota's advisory locks are database-wide, not per schema)"
            )
        try:
            yield fresh
        finally:
            for name in made:
                admin.execute(f'DROP SCHEMA "{name}" CASCADE')


@contextmanager
def redis_prefixes(notes: list[str]) -> Iterator[Callable[[], str] | None]:
    """A maker of fresh key prefixes on the local Redis (keys deleted at the end), or None."""
    import redis

    client = redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        notes.append(f"Redis not reachable at {REDIS} ({one_line(exc)}): rows left out")
        yield None
        return
    others = int(client.info("clients")["connected_clients"]) - 1
    if others:
        notes.append(f"{others} other clients were connected to Redis at the start")
    made: list[str] = []

    def fresh() -> str:
        prefix = f"bench{uuid.uuid4().hex[:10]}"
        made.append(prefix)
        return prefix

    try:
        yield fresh
    finally:
        for prefix in made:
            names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(names), 500):
                client.unlink(*names[start : start + 500])
        client.close()


@contextmanager
def redis_cluster(notes: list[str], workdir: Path) -> Iterator[str | None]:
    """A three-node Redis Cluster on loopback for this run (the tests' launcher), or None.

    Nothing else uses it, so its keys need no cleaning: it is stopped at the end.
    """
    from tests.services import start_redis_cluster, stop

    try:
        seed, procs = start_redis_cluster(workdir)
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"no local Redis Cluster ({one_line(exc)}): cluster rows left out")
        yield None
        return
    try:
        yield seed
    finally:
        stop(procs)
