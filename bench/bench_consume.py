"""``make bench``: consume on every backend, in-process and over HTTP, against floors, one table.

Run from the repository root: ``python -m bench.bench_consume [--only sqlite,postgres]
[--json PATH]``. bench/README.md says what each row and floor is. It asserts
nothing: every figure that matters is a ratio to a floor measured in the same
run, alternating with the row, because the machine is noisy.

- in-process: ``tokenquota.open(...)`` and ``quota.consume(...)`` in a loop,
  rounds alternating with the backend's floor (bench/floors.py);
- HTTP: ``tokenquota serve --workers 2`` and a bare FastAPI endpoint
  (bench/bare_app.py) under uvicorn with 2 workers, each loaded in turn by the
  same driver (bench/loadgen.py): 64 keep-alive connections, fixed duration;
- hot row: 16 threads consuming for 16 users of one company (one shared
  counter) on the stores that allow it, beside the same floor.

Each store gets a fresh SQLite file, PostgreSQL schema or Redis key prefix,
removed at the end. Only tokenquota's public API and its CLI are used.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tokenquota
from bench import loadgen
from bench.common import (
    CONSUME_BODY,
    LIMIT,
    ROUND_SECONDS,
    ROUNDS,
    Figures,
    alternated,
    consumer,
    opened,
)
from bench.floors import limits_floor, postgres_floor, redis_floor, sqlite_floor
from bench.servers import WORKERS, Endpoint, ServerFailed, bare, served
from bench.stores import postgres_schemas, postgres_url, redis_cluster, redis_prefixes, redis_url
from bench.table import Row, print_table, wide_console, write_json

CALLS = 400  # per round, in-process
FAST_CALLS = 5_000  # per round, for the memory backend and its floor (a few ms per 400)
HTTP_ROUNDS = 2  # the bare endpoint and the service alternate; the best round of each
HTTP_SECONDS = 4.0  # timed, per round, after HTTP_WARMUP untimed
HTTP_WARMUP = 1.0
CONNECTIONS = 64
DRIVER_PROCESSES = 2  # one Python process cannot keep 64 connections busy on this machine
HOT_THREADS = 16
HOT_CALLS = 25  # per thread
BACKENDS = ("memory", "sqlite", "postgres", "redis", "cluster")
DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "latest.json"

# The targets: tokenquota's rate / the floor's, at least.
TARGETS = {
    ("memory", "in-process"): 1.0,
    ("sqlite", "in-process"): 0.5,
    ("postgres", "in-process"): 0.7,
    ("redis", "in-process"): 0.7,
    ("sqlite", "HTTP"): 0.2,
    ("postgres", "HTTP"): 0.2,
    ("redis", "HTTP"): 0.5,
}
LABELS = {
    "memory": "memory",
    "sqlite": "SQLite",
    "postgres": "PostgreSQL",
    "redis": "PostgreSQL + Redis",
    "cluster": "PostgreSQL + Redis Cluster",
}


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logs: Path = Path()
    http_floor: Endpoint | None = None  # the bare endpoint, started with the first HTTP row

    def in_process(
        self,
        backend: str,
        floor_name: str,
        floor: Callable[[], object],
        stores: Callable[[], tuple[str, str | None]],
        *,
        calls: int = CALLS,
        hot: bool = False,
    ) -> None:
        """The in-process row of one backend (and its hot row); ``stores()`` gives fresh URLs."""
        db, redis = stores()
        with opened(db, redis) as quota:
            floor_figures, figures = alternated(floor, consumer(quota), calls)
            self.rows.append(
                Row(
                    f"{LABELS[backend]}, in-process",
                    backend,
                    "in-process",
                    figures,
                    floor_name,
                    floor_figures,
                    TARGETS.get((backend, "in-process")),
                )
            )
            if hot:
                name = f"{LABELS[backend]}, {HOT_THREADS} threads, one company"
                self.rows.append(
                    Row(name, backend, "hot row", hot_row(quota), floor_name, floor_figures)
                )

    def http(self, backend: str, stores: Callable[[], tuple[str, str | None]]) -> None:
        """``POST /v1/consume`` on ``serve --workers 2``, alternating with the bare endpoint."""
        assert self.http_floor is not None
        db, redis = stores()
        try:
            with served(db, redis, self.logs) as endpoint:
                floor, figures = alternated_http(self.http_floor, endpoint)
        except ServerFailed as exc:
            self.notes.append(f"{LABELS[backend]} over HTTP left out: tokenquota serve {exc}")
            return
        except RuntimeError as exc:  # the load generator could not run
            self.notes.append(f"{LABELS[backend]} over HTTP left out: {exc}")
            return
        for what, result in (("tokenquota", figures), ("the bare endpoint", floor)):
            if result.errors:
                self.notes.append(
                    f"{LABELS[backend]} over HTTP: {result.errors} failed requests to {what}"
                    f" (first: {result.first_error})"
                )
        self.rows.append(
            Row(
                f"{LABELS[backend]}, HTTP",
                backend,
                "HTTP",
                figures.figures,
                "bare FastAPI",
                floor.figures,
                TARGETS.get((backend, "HTTP")),
                driver={
                    "connections": CONNECTIONS,
                    "processes": DRIVER_PROCESSES,
                    "seconds": HTTP_SECONDS,
                    "errors": figures.errors,
                    "floor_errors": floor.errors,
                    "driver_cpu": round(figures.client_cpu, 3),
                    "floor_driver_cpu": round(floor.client_cpu, 3),
                    # Timed answers per serve worker (the X-Request-ID's process part).
                    "answers_by_worker": list(figures.by_server),
                },
            )
        )


def load(endpoint: Endpoint) -> loadgen.LoadResult:
    return loadgen.drive(
        endpoint.url,
        CONSUME_BODY,
        endpoint.headers,
        connections=CONNECTIONS,
        duration=HTTP_SECONDS,
        warmup=HTTP_WARMUP,
        processes=DRIVER_PROCESSES,
    )


def alternated_http(
    floor: Endpoint, service: Endpoint
) -> tuple[loadgen.LoadResult, loadgen.LoadResult]:
    """The best of HTTP_ROUNDS rounds of each, floor and service taking turns."""
    floors: list[loadgen.LoadResult] = []
    services: list[loadgen.LoadResult] = []
    for _ in range(HTTP_ROUNDS):
        floors.append(load(floor))
        services.append(load(service))

    def best(results: list[loadgen.LoadResult]) -> loadgen.LoadResult:
        return max(results, key=lambda r: r.figures.rate)

    return best(floors), best(services)


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


@contextmanager
def closing(made: tuple[Callable[[], None], Callable[[], None]]) -> Iterator[Callable[[], None]]:
    """A floor's call, its connection closed at the end."""
    once, close = made
    try:
        yield once
    finally:
        close()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--only",
        default=",".join(BACKENDS),
        metavar=",".join(BACKENDS),
        help="the backends to run (default: all)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="the in-process rows only (no HTTP rows)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if unknown := args.only - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = arguments()
    only: set[str] = args.only
    load_before = os.getloadavg()
    started = time.monotonic()
    run = Run()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run.logs = tmp
        files = itertools.count()

        def sqlite_store() -> tuple[str, str | None]:
            return f"sqlite:///{tmp / f'q{next(files)}.db'}", None

        if "memory" in only:
            try:
                floor_name, floor = "limits", limits_floor()
            except ImportError:
                run.notes.append("no `limits` library installed: memory compared with sqlite3")
                floor_name = "sqlite3"
                floor = stack.enter_context(closing(sqlite_floor(tmp / "floor0.db")))
            run.in_process(
                "memory", floor_name, floor, lambda: ("memory://", None), calls=FAST_CALLS
            )
        if "sqlite" in only:
            floor = stack.enter_context(closing(sqlite_floor(tmp / "floor.db")))
            run.in_process("sqlite", "sqlite3", floor, sqlite_store)

        schemas = (
            stack.enter_context(postgres_schemas(run.notes))
            if only & {"postgres", "redis", "cluster"}
            else None
        )
        prefixes = (
            stack.enter_context(redis_prefixes(run.notes)) if only & {"redis", "cluster"} else None
        )
        if schemas is not None and "postgres" in only:
            make_schema = schemas
            floor = stack.enter_context(closing(postgres_floor(make_schema())))
            run.in_process(
                "postgres", "psycopg", floor, lambda: (postgres_url(make_schema()), None), hot=True
            )

        def redis_store() -> tuple[str, str | None]:
            assert schemas is not None
            assert prefixes is not None
            return postgres_url(schemas()), redis_url(prefixes())

        if "redis" in only and prefixes is not None:
            if schemas is None:
                run.notes.append("the Redis backend keeps its ledger in PostgreSQL: rows left out")
            else:
                floor = stack.enter_context(closing(redis_floor(prefixes())))
                run.in_process("redis", "redis-py EVALSHA", floor, redis_store, hot=True)
        seed = (
            stack.enter_context(redis_cluster(run.notes, tmp / "cluster"))
            if "cluster" in only and schemas is not None
            else None
        )

        def cluster_store() -> tuple[str, str | None]:
            assert schemas is not None
            assert seed is not None
            return postgres_url(schemas()), f"{seed}?prefix=bench{uuid.uuid4().hex[:10]}"

        if seed is not None:
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(seed, socket_timeout=10, socket_connect_timeout=5)
            floor = stack.enter_context(
                closing(redis_floor(f"bench{uuid.uuid4().hex[:10]}", client))
            )
            run.in_process("cluster", "RedisCluster EVALSHA", floor, cluster_store, hot=True)

        # HTTP rows, after every in-process row: the servers' workers would compete with them.
        http_rows: list[tuple[str, Callable[[], tuple[str, str | None]]]] = []
        if "sqlite" in only:
            http_rows.append(("sqlite", sqlite_store))
        if "postgres" in only and schemas is not None:
            http_rows.append(("postgres", lambda: (postgres_url(schemas()), None)))
        if "redis" in only and schemas is not None and prefixes is not None:
            http_rows.append(("redis", redis_store))
        if seed is not None:
            http_rows.append(("cluster", cluster_store))
        if args.in_process:
            http_rows = []
        if http_rows:
            try:
                run.http_floor = stack.enter_context(bare(tmp))
            except ServerFailed as exc:
                run.notes.append(f"every HTTP row left out: the bare endpoint {exc}")
                http_rows = []
            for backend, stores in http_rows:
                run.http(backend, stores)
        if "memory" in only:
            run.notes.append("memory has no HTTP row: serve refuses memory:// with several workers")
    finish(run, args.json, load_before, time.monotonic() - started)


def finish(
    run: Run, json_path: Path, load_before: tuple[float, float, float], seconds: float
) -> None:
    console = wide_console()
    title = (
        f"consume vs a floor, same run: in-process best of {ROUNDS} alternating rounds of"
        f" {CALLS} calls (memory {FAST_CALLS}); HTTP {WORKERS} workers, {CONNECTIONS}"
        f" connections, best of {HTTP_ROUNDS} alternating {HTTP_SECONDS:.0f} s rounds"
    )
    print_table(console, title, run.rows)
    legend = [
        "ratio = tokenquota's rate / the floor's (higher is better; 1.0 = as fast as the floor);"
        " target: the issue's minimum ratio. p50/p99: per call in-process, per request over HTTP.",
        "Floors: limits = the `limits` library, 4 fixed windows in memory; sqlite3, psycopg = one"
        " locked transaction (read 4 counters, upsert them, insert 1 event, commit); redis-py ="
        " EVALSHA of the same in a 3-key Lua script; bare FastAPI = an async def endpoint parsing"
        " the same body under uvicorn with the same workers, loaded by the same driver.",
    ]
    if any(row.backend == "cluster" for row in run.rows):
        legend.append(
            "cluster: a consume runs one script per slot it touches (user, company, ledger"
            " shard); its floor is one EVALSHA of the 3-key script with all keys in one slot."
        )
    if any(row.figures.cut or row.floor_figures.cut for row in run.rows):
        legend.append(
            f"* a round ran out of its {ROUND_SECONDS:.0f}s budget: fewer calls behind the figure."
        )
    after = os.getloadavg()
    legend.append(
        f"Load average {load_before[0]:.1f} at the start, {after[0]:.1f} at the end,"
        f" on {os.cpu_count()} CPUs; {seconds:.0f} s in all."
    )
    legend.append(f"tokenquota imported from {Path(tokenquota.__file__).parent}")
    for line in legend + run.notes:
        console.print(line, highlight=False, soft_wrap=True)
    settings = {
        "calls": CALLS,
        "fast_calls": FAST_CALLS,
        "rounds": ROUNDS,
        "round_seconds": ROUND_SECONDS,
        "http": {
            "workers": WORKERS,
            "connections": CONNECTIONS,
            "driver_processes": DRIVER_PROCESSES,
            "rounds": HTTP_ROUNDS,
            "seconds": HTTP_SECONDS,
            "warmup_seconds": HTTP_WARMUP,
        },
        "hot_threads": HOT_THREADS,
    }
    write_json(
        json_path,
        run.rows,
        load_before=load_before,
        extra={"seconds": round(seconds, 1), "settings": settings, "notes": run.notes},
    )
    console.print(f"JSON: {json_path}", highlight=False)


if __name__ == "__main__":
    main()
