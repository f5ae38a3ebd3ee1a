"""Consume throughput and latency per backend, in-process and over HTTP, against raw floors.

Run with ``make bench`` (bench/README.md says how to read it). Prints tables;
asserts nothing. Figures are ratios to a floor measured in the same run,
because machines are noisy. Every row has one shape (issue 13): ``user:alice``
with tokens limits per minute, hour and day, in ``company:acme`` with a tokens
limit per month. Each floor is a bare call of the same shape as one consume on
its backend, with no tokenquota code in it:

- limits: the ``limits`` library (PyPI) deciding the same four limits with
  fixed windows in memory. The memory rows are compared with it (with
  sqlite3 when it is not installed).
- sqlite3: one durable transaction (take the write lock, read four counters,
  bump them, append one event, commit with synchronous=FULL). The SQLite rows
  are compared with it.
- psycopg: the same transaction on PostgreSQL under an advisory lock. The
  PostgreSQL rows are compared with it.
- redis-py ``EVALSHA`` of a 3-key Lua script (read the four counters in the
  user's and the company's hashes, HINCRBY them, XADD one event to a stream), with
  the client settings the Redis backend uses. The Redis rows are compared
  with it.
- redis-py ``RedisCluster``: the same script on a three-node Redis Cluster
  started for the run (all three keys in one slot). The cluster rows, the
  Redis backend on that cluster, are compared with it.

Every backend is measured in-process (library calls) and through HTTP: a
``tokenquota serve`` subprocess on a free port, consume called with
``POST /v1/consume`` and a service key over one keep-alive ``httpx.Client``.
"HTTP rate / in-process rate" is what the service keeps of the library's
throughput.

PostgreSQL rows need a server at TOKENQUOTA_BENCH_POSTGRES and Redis rows
also one at TOKENQUOTA_BENCH_REDIS; without them the rows are left out with
the reason printed. ``--only memory,sqlite`` runs only the named backends.
Each store gets a fresh schema (and a fresh Redis key prefix), dropped (and
its keys deleted) at the end.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

import tokenquota
from tokenquota import FrozenClock

ROUNDS = 3
CALLS = 400  # per round, in-process
FAST_CALLS = 5_000  # per round, for the memory backend and its floor (a few ms per 400)
HTTP_CALLS = 200  # per round, through HTTP
WARMUP = 20  # untimed calls first: connections, prepared statements, the script cache
# A round stops early after this long (a busy machine or a contended server),
# so that `make bench` stays within a few minutes; such figures are starred.
ROUND_SECONDS = 3.0
HOT_THREADS = 16
HOT_CALLS = 25  # per thread
SERVER_START_SECONDS = 60

POSTGRES = os.environ.get("TOKENQUOTA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TOKENQUOTA_BENCH_REDIS", "redis://127.0.0.1:6379/0")
LIMIT = 10**15  # never reached: every call is an admitted decision
# The shape of every row (issue 13): user:alice with tokens limits per minute, hour
# and day, in company:acme with a tokens limit per month.
USER_WINDOWS = ("minute", "hour", "day")
COMPANY_WINDOWS = ("month",)
COUNTERS = ("user:minute", "user:hour", "user:day", "company:month")  # the floors' rows
BACKENDS = ("memory", "sqlite", "postgres", "redis", "cluster")


@dataclass(frozen=True)
class Figures:
    rate: float  # calls per second
    p50: float  # microseconds
    p99: float
    calls: int  # timed calls behind these figures
    cut: bool = False  # the round ran out of time before its calls

    @classmethod
    def of(cls, latencies: list[float], elapsed: float, cut: bool = False) -> Figures:
        ordered = sorted(latencies)
        return cls(
            len(ordered) / elapsed,
            ordered[len(ordered) // 2] * 1e6,
            ordered[int(len(ordered) * 0.99)] * 1e6,
            len(ordered),
            cut,
        )


def timed(fn: Callable[[], object], calls: int = CALLS) -> Figures:
    """Calls per second, p50 and p99 latency in microseconds: the best of ROUNDS rounds."""
    deadline = time.perf_counter() + ROUND_SECONDS
    for _ in range(WARMUP):
        fn()
        if time.perf_counter() > deadline:
            break
    best: Figures | None = None
    for _ in range(ROUNDS):
        latencies = []
        deadline = time.perf_counter() + ROUND_SECONDS
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            if t1 > deadline:
                break
        row = Figures.of(latencies, sum(latencies), cut=len(latencies) < calls)
        if best is None or row.rate > best.rate:
            best = row
    assert best is not None
    return best


# floors ------------------------------------------------------------------------
def raw_floor(path: Path) -> Callable[[], None]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def once() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"SELECT v FROM c WHERE k IN ({','.join('?' * len(COUNTERS))})", COUNTERS)
        for key in COUNTERS:
            conn.execute(
                "INSERT INTO c VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1", (key,)
            )
        conn.execute("INSERT INTO e (body) VALUES ('{}')")
        conn.execute("COMMIT")

    return once


def postgres_floor(schema: str) -> Callable[[], None]:
    """The same shape on PostgreSQL: lock, read four counters, bump them, append, commit."""
    import psycopg

    conn = psycopg.connect(POSTGRES, options=f"-csearch_path={schema}")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    conn.execute("CREATE TABLE e (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    conn.commit()

    def once() -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(1)")
            conn.execute("SELECT v FROM c WHERE k = ANY(%s)", (list(COUNTERS),)).fetchall()
            for key in COUNTERS:
                conn.execute(
                    "INSERT INTO c VALUES (%s, 1) ON CONFLICT (k) DO UPDATE SET v = c.v + 1",
                    (key,),
                )
            conn.execute("INSERT INTO e (body) VALUES ('{}')")

    return once


# The same shape on Redis: check the four counters (three in the user's hash, one
# in the company's), bump them, append one event.
FLOOR_LUA = """
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local fields = {{1, 'minute'}, {1, 'hour'}, {1, 'day'}, {2, 'month'}}
for _, f in ipairs(fields) do
  if tonumber(redis.call('HGET', KEYS[f[1]], f[2]) or '0') + n > limit then return 0 end
end
for _, f in ipairs(fields) do redis.call('HINCRBY', KEYS[f[1]], f[2], n) end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
return 1
"""


def limits_floor() -> Callable[[], None]:
    """The ``limits`` library (PyPI) deciding the same four limits: fixed windows in memory.

    One ``hit`` per limit (each checks and counts its own window); it keeps no
    hierarchy, ledger or idempotency, which is what the memory backend adds.
    """
    from limits import (
        RateLimitItemPerDay,
        RateLimitItemPerHour,
        RateLimitItemPerMinute,
        RateLimitItemPerMonth,
    )
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(MemoryStorage())
    items = [
        (RateLimitItemPerMinute(LIMIT), "user:alice"),
        (RateLimitItemPerHour(LIMIT), "user:alice"),
        (RateLimitItemPerDay(LIMIT), "user:alice"),
        (RateLimitItemPerMonth(LIMIT), "company:acme"),
    ]

    def once() -> None:
        for item, subject in items:
            if not limiter.hit(item, subject, cost=10):
                raise RuntimeError("the limits floor refused")

    return once


def redis_client() -> Any:
    """A client with the settings the Redis backend uses (storage/redis/store.py)."""
    import redis

    return redis.Redis.from_url(REDIS, socket_timeout=10, socket_connect_timeout=5)


def redis_floor(prefix: str, client: Any = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """One EVALSHA per call (redis-py loads the script on the first NOSCRIPT); and a closer.

    ``client`` is the local Redis unless given (a cluster client): on a
    cluster the three keys share one hash tag, since a script reaches one slot.
    """
    if client is None:
        client = redis_client()
        keys = [f"{prefix}:{{user:alice}}:c", f"{prefix}:{{company:acme}}:c"]
        keys.append(f"{prefix}:{{L0}}:events")
    else:
        keys = [f"{prefix}:{{alice}}:{name}" for name in ("user", "company", "events")]
    script = client.register_script(FLOOR_LUA)
    args = ["10", str(LIMIT), "{}"]

    def once() -> None:
        if script(keys=keys, args=args) != 1:
            raise RuntimeError("the floor script refused")

    return once, client.close


# the services the rows need -------------------------------------------------------
@contextmanager
def postgres_schemas(notes: list[str]) -> Iterator[Callable[[], str] | None]:
    """A maker of throwaway schemas on the local PostgreSQL, or None when there is none."""
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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def postgres_url(schema: str) -> str:
    driver = "postgresql+psycopg:" + POSTGRES.partition(":")[2]
    return f"{driver}?options={quote(f'-csearch_path={schema}', safe='')}"


def redis_url(prefix: str) -> str:
    return f"{REDIS}?prefix={prefix}"


# in-process ------------------------------------------------------------------------
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC))


@contextmanager
def opened(db: str, redis: str | None = None) -> Iterator[tokenquota.Quota]:
    quota = tokenquota.open(db, redis=redis, clock=clock())
    try:
        quota.set_parents("user:alice", ["company:acme"])
        for window in USER_WINDOWS:
            quota.set_limit("user:alice", "tokens", window, LIMIT)
        for window in COMPANY_WINDOWS:
            quota.set_limit("company:acme", "tokens", window, LIMIT)
        yield quota
    finally:
        quota.close()


def library(quota: tokenquota.Quota) -> Callable[[], None]:
    def once() -> None:
        if not quota.consume("user:alice", tokens=10).allowed:
            raise RuntimeError("a consume was denied")

    return once


def hot_row(quota: tokenquota.Quota) -> Figures:
    """HOT_THREADS threads consuming for different users of ONE company: decisions/s, p50, p99.

    Every decision debits the same company counter, the row a big customer's
    users all share. A short untimed round first opens the pooled connections.
    """
    users = [f"user:hot{i}" for i in range(HOT_THREADS)]
    quota.set_limit("company:hot", "tokens", "month", LIMIT)
    for user in users:
        quota.set_parents(user, ["company:hot"])
        quota.set_limit(user, "tokens", "day", LIMIT)
    hot_round(quota, users, 2)
    return hot_round(quota, users, HOT_CALLS)


def hot_round(quota: tokenquota.Quota, users: list[str], calls: int) -> Figures:
    start = threading.Barrier(len(users) + 1)
    latencies: list[list[float]] = [[] for _ in users]
    failures: list[BaseException] = []
    deadline = 0.0  # set before the barrier lets the workers go

    def worker(user: str, mine: list[float]) -> None:
        start.wait()
        try:
            for _ in range(calls):
                t0 = time.perf_counter()
                if not quota.consume(user, tokens=10).allowed:
                    raise RuntimeError("a consume was denied")
                t1 = time.perf_counter()
                mine.append(t1 - t0)
                if t1 > deadline:
                    break
        except BaseException as exc:  # reported after the join
            failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(user, mine))
        for user, mine in zip(users, latencies, strict=True)
    ]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    deadline = t0 + ROUND_SECONDS
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise failures[0]
    every = [x for mine in latencies for x in mine]
    return Figures.of(every, elapsed, cut=len(every) < calls * len(users))


# through HTTP ----------------------------------------------------------------------
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


class ServerFailed(Exception):
    pass


@contextmanager
def served(db: str, redis: str | None, logs: Path) -> Iterator[httpx.Client]:
    """``tokenquota serve`` on a free port, set up like ``opened``; a service-key client."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin_key = secrets.token_urlsafe(24)
    command = [*tokenquota_command(), "serve", "--db", db, "--host", "127.0.0.1"]
    command += ["--port", str(port), *(["--redis", redis] if redis else [])]
    env = {**os.environ, "TOKENQUOTA_ADMIN_KEY": admin_key}
    log_path = logs / f"serve-{port}.log"
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb"))
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(stop, proc)
        admin = stack.enter_context(
            httpx.Client(base_url=base, headers={"X-API-Key": admin_key}, timeout=30)
        )
        wait_healthy(admin, proc, log_path)
        setup = [
            ("PUT", "/v1/subjects/user:alice", {"parents": ["company:acme"]}),
            ("PUT", "/v1/subjects/user:alice/limits", limits(USER_WINDOWS)),
            ("PUT", "/v1/subjects/company:acme/limits", limits(COMPANY_WINDOWS)),
        ]
        for method, path, body in setup:
            admin.request(method, path, json=body).raise_for_status()
        created = admin.post("/v1/keys", json={"role": "service", "name": "bench"})
        created.raise_for_status()
        yield stack.enter_context(
            httpx.Client(base_url=base, headers={"X-API-Key": created.json()["key"]}, timeout=30)
        )


def limits(windows: tuple[str, ...]) -> dict[str, object]:
    return {"limits": [{"metric": "tokens", "window": w, "limit": LIMIT} for w in windows]}


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http(client: httpx.Client) -> Callable[[], None]:
    body = {"subject": "user:alice", "amounts": {"tokens": 10}}

    def once() -> None:
        answer = client.post("/v1/consume", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"consume answered {answer.status_code}: {answer.text[:200]}")

    return once


# the run ---------------------------------------------------------------------------
@dataclass
class Row:
    backend: str
    via: str  # floor, in-process or HTTP
    figures: Figures
    floor: str
    floor_figures: Figures
    in_process: Figures | None = None  # for an HTTP row: the same backend in-process


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    hot: list[tuple[str, Figures, Figures]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logs: Path = Path()

    def floor(self, name: str, figures: Figures) -> tuple[str, Figures]:
        self.rows.append(Row(name, "floor", figures, name, figures))
        return name, figures

    def backend(
        self,
        name: str,
        floor: tuple[str, Figures],
        stores: Callable[[], tuple[str, str | None]],
        *,
        hot: bool = False,
        calls: int = CALLS,
    ) -> None:
        """In-process and HTTP rows of one backend; ``stores()`` gives a fresh store's URLs."""
        db, redis = stores()
        with opened(db, redis) as quota:
            inproc = timed(library(quota), calls)
            self.rows.append(Row(name, "in-process", inproc, *floor))
            if hot:
                self.hot.append((name, hot_row(quota), inproc))
        db, redis = stores()
        try:
            with served(db, redis, self.logs) as client:
                figures = timed(http(client), HTTP_CALLS)
        except ServerFailed as exc:
            self.notes.append(f"{name} over HTTP left out: tokenquota serve {exc}")
            return
        self.rows.append(Row(name, "HTTP", figures, *floor, inproc))


def chosen(argv: list[str]) -> set[str]:
    """The backends named on the command line (``--only memory,sqlite``); all by default."""
    if not argv:
        return set(BACKENDS)
    if len(argv) != 2 or argv[0] != "--only":
        raise SystemExit(f"usage: bench_consume.py [--only {','.join(BACKENDS)}]")
    names = set(argv[1].split(","))
    if unknown := names - set(BACKENDS):
        raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))}")
    return names


def main() -> None:
    only = chosen(sys.argv[1:])
    load = os.getloadavg()[0]
    run = Run()
    run.notes.append(f"tokenquota imported from {Path(tokenquota.__file__).parent}")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run.logs = tmp
        files = itertools.count()
        if "memory" in only:
            try:
                floor = run.floor("limits", timed(limits_floor(), FAST_CALLS))
            except ImportError:
                run.notes.append("no `limits` library installed: memory compared with sqlite3")
                floor = run.floor("sqlite3", timed(raw_floor(tmp / "floor0.db")))
            run.backend("memory", floor, lambda: ("memory://", None), calls=FAST_CALLS)
        if "sqlite" in only:
            sqlite = run.floor("sqlite3", timed(raw_floor(tmp / "floor.db")))
            run.backend("sqlite", sqlite, lambda: (f"sqlite:///{tmp / f'q{next(files)}.db'}", None))
        if not only & {"postgres", "redis", "cluster"}:
            print_tables(Console(), run, load)
            return

        schemas = stack.enter_context(postgres_schemas(run.notes))
        prefixes = stack.enter_context(redis_prefixes(run.notes))
        if schemas is not None and "postgres" in only:
            make_schema = schemas
            pg = run.floor("psycopg", timed(postgres_floor(make_schema())))
            run.backend("postgres", pg, lambda: (postgres_url(make_schema()), None), hot=True)
        if prefixes is not None and "redis" in only:
            make_prefix = prefixes
            once, close = redis_floor(make_prefix())
            try:
                rd = run.floor("redis-py", timed(once))
            finally:
                close()
            if schemas is None:
                run.notes.append("the Redis backend keeps its ledger in PostgreSQL: rows left out")
            else:
                run.backend(
                    "redis",
                    rd,
                    lambda: (postgres_url(make_schema()), redis_url(make_prefix())),
                    hot=True,
                )
        seed = (
            stack.enter_context(redis_cluster(run.notes, tmp / "cluster"))
            if "cluster" in only
            else None
        )
        if seed is not None and schemas is not None:
            make_cluster_schema = schemas
            cluster_run(run, seed, lambda: postgres_url(make_cluster_schema()))
    print_tables(Console(), run, load)


def cluster_run(run: Run, seed: str, make_db: Callable[[], str]) -> None:
    """The cluster's floor, then the Redis backend on the cluster (fresh prefixes)."""
    from redis.cluster import RedisCluster

    prefixes = (f"bench{uuid.uuid4().hex[:10]}" for _ in itertools.count())
    once, close = redis_floor(
        next(prefixes), RedisCluster.from_url(seed, socket_timeout=10, socket_connect_timeout=5)
    )
    try:
        floor = run.floor("RedisCluster", timed(once))
    finally:
        close()
    run.backend("cluster", floor, lambda: (make_db(), f"{seed}?prefix={next(prefixes)}"), hot=True)


def print_tables(console: Console, run: Run, load: float) -> None:
    table = Table(
        title=(
            f"consume: best of {ROUNDS} rounds of {CALLS} calls "
            f"(memory, limits: {FAST_CALLS}; HTTP: {HTTP_CALLS})"
        ),
        box=box.SIMPLE_HEAD,
    )
    for column in ("backend", "via", "calls/s", "p50 µs", "p99 µs", "vs floor", "HTTP/lib"):
        table.add_column(column, justify="left" if column in ("backend", "via") else "right")
    for i, row in enumerate(run.rows):
        if i and row.via == "floor":
            table.add_section()  # each group: a floor, then the rows compared with it
        f = row.figures
        overhead = f"{f.rate / row.in_process.rate:.2f}" if row.in_process else ""
        table.add_row(
            row.backend,
            row.via,
            f"{f.rate:,.0f}" + ("*" if f.cut else ""),
            f"{f.p50:,.0f}",
            f"{f.p99:,.0f}",
            f"{row.floor_figures.rate / f.rate:.2f}x",
            overhead,
        )
    console.print(table)
    if run.hot:
        table = Table(
            title=(
                f"hot row: {HOT_THREADS} threads in one process, different users of one company"
            ),
            box=box.SIMPLE_HEAD,
        )
        for column in ("backend", "decisions/s", "p50 µs", "p99 µs", "rate vs 1 thread"):
            table.add_column(column, justify="left" if column == "backend" else "right")
        for name, f, single in run.hot:
            table.add_row(
                name,
                f"{f.rate:,.0f}" + ("*" if f.cut else ""),
                f"{f.p50:,.0f}",
                f"{f.p99:,.0f}",
                f"{f.rate / single.rate:.2f}x",
            )
        console.print(table)
    legend = [
        "vs floor: the rate of the floor opening the row's group / the row's rate",
        "(how many bare calls of the same shape fit in the time of one call).",
        "HTTP/lib: the HTTP rate / the in-process rate of the same backend.",
        "Shape: user:alice (tokens per minute, hour, day) in company:acme (tokens per month).",
        "Floors: sqlite3, psycopg: one locked transaction (read 4 counters, bump them,",
        "append 1 event, commit); redis-py: EVALSHA of the same in a 3-key Lua script;",
        "limits: the `limits` library, fixed windows in memory, one hit per limit.",
    ]
    if any(row.backend == "redis" for row in run.rows):
        legend.append("redis: counters in Redis; ledger, subjects and limits in PostgreSQL.")
    if any(row.backend == "cluster" for row in run.rows):
        legend += [
            "cluster: the same on a local 3-node Redis Cluster; user, company and ledger",
            "shard sit in different slots, so a consume runs one script per slot (3 or so);",
            "its floor is one EVALSHA of the 3-key script with all keys in one slot.",
        ]
    legend.append(f"Load average at the start: {load:.1f} on {os.cpu_count()} CPUs.")
    cut = [r for r in run.rows if r.figures.cut] + [f for _, f, _ in run.hot if f.cut]
    if cut:
        legend.append(
            f"* a round ran out of its {ROUND_SECONDS:.0f}s budget: fewer calls behind the figure."
        )
    for line in legend + run.notes:
        console.print(line, highlight=False)


if __name__ == "__main__":
    main()
