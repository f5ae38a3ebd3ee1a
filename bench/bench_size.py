"""``make bench-size``: consume and usage latency as the store grows (issue 13 part 6).

    python -m bench.bench_size [--sizes 10000,100000,1000000] [--only memory,sqlite,postgres]

For each backend, one store grows through the sizes (``user:alice``-shaped
users with limits, 100 per company, each with one recorded event: 10⁶ users
means 10⁶ ledger events and 10⁴ companies). At each size the store is opened
afresh (SQL stores; the memory store lives in its one engine) and
SAMPLES consumes and SAMPLES usage reads are timed, each on a different
random user, through ``tokenquota.open`` only. How the store is filled is in
bench/populate.py. Slow (10⁶ takes a while on every backend); not part of
``make bench``. The curve: p50 at each size, and p50 at the largest size /
p50 at the smallest (the issue's target: within 1.5x).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

import tokenquota
from bench import populate
from bench.common import POSTGRES, Figures, clock
from bench.stores import postgres_schemas, postgres_url
from bench.table import git_commit, machine, wide_console

SIZES = (10_000, 100_000, 1_000_000)
SAMPLES = 300  # timed calls per operation and size, each on a different user
WARMUP = 20
TARGET = 1.5  # p50 at the largest size / p50 at the smallest, at most
BACKENDS = ("sqlite", "postgres", "memory")  # in the order they run
DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "size.json"


@dataclass(frozen=True)
class Point:
    backend: str
    size: int  # users; size / 100 companies; size events
    populate_seconds: float  # adding the users since the previous size
    open_ms: float  # tokenquota.open and the first consume on the grown store
    consume: Figures
    usage: Figures
    peak_rss_mb: float  # of this process so far (a cached configuration or the memory store)


def measure(quota: tokenquota.Quota, size: int, rng: random.Random) -> tuple[Figures, Figures]:
    """SAMPLES consumes and SAMPLES usage reads, each on a random user of the store."""
    picked = rng.sample(range(size), min(size, 2 * SAMPLES + WARMUP))
    warm, consumed, read = picked[:WARMUP], picked[WARMUP::2], picked[WARMUP + 1 :: 2]
    for i in warm:
        quota.consume(populate.user(i), tokens=1)
        quota.usage(populate.user(i))

    def timed(fn: Callable[[str], object], users: list[int]) -> Figures:
        latencies = []
        for i in users:
            t0 = time.perf_counter()
            fn(populate.user(i))
            latencies.append(time.perf_counter() - t0)
        return Figures.of(latencies, sum(latencies))

    def consume(name: str) -> None:
        if not quota.consume(name, tokens=populate.TOKENS).allowed:
            raise RuntimeError(f"a consume for {name} was denied")

    return timed(consume, consumed), timed(quota.usage, read)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def opened_timed(db: str) -> tuple[tokenquota.Quota, float]:
    """The engine on the grown store, and how long opening it and one consume took (ms)."""
    t0 = time.perf_counter()
    quota = tokenquota.open(db, clock=clock())
    quota.consume(populate.user(0), tokens=1)
    return quota, (time.perf_counter() - t0) * 1e3


def grow_memory(sizes: list[int], report: Callable[[Point], None]) -> None:
    rng = random.Random(1)
    with tokenquota.open("memory://", clock=clock()) as quota:
        previous = 0
        for size in sizes:
            t0 = time.perf_counter()
            populate.add_through_api(quota, previous, size)
            seconds = time.perf_counter() - t0
            populate.verify(quota, previous, size)
            consume, usage = measure(quota, size, rng)
            report(Point("memory", size, seconds, 0.0, consume, usage, peak_rss_mb()))
            previous = size


def grow_sql(
    backend: str,
    db: str,
    connect: Callable[[], populate.Sql],
    sizes: list[int],
    report: Callable[[Point], None],
) -> None:
    """Template through the API, copies through SQL, measurements through the API."""
    rng = random.Random(1)
    with tokenquota.open(db, clock=clock()) as quota:
        populate.make_template(quota)
    template: populate.Template | None = None
    previous = 0
    for size in sizes:
        t0 = time.perf_counter()
        sql = connect()
        try:
            template = template or populate.Template.read(sql)
            populate.add_through_sql(sql, template, previous, size)
        finally:
            sql.close()
        seconds = time.perf_counter() - t0
        quota, open_ms = opened_timed(db)
        with quota:
            populate.verify(quota, previous, size)
            consume, usage = measure(quota, size, rng)
        report(Point(backend, size, seconds, open_ms, consume, usage, peak_rss_mb()))
        previous = size


def print_points(points: list[Point]) -> None:
    console = wide_console()
    table = Table(
        title=f"consume and usage as the store grows ({SAMPLES} calls each, random users)",
        box=box.SIMPLE_HEAD,
    )
    columns = (
        "backend",
        "users",
        "filled in s",
        "open+1st ms",
        "consume p50 µs",
        "p99 µs",
        "usage p50 µs",
        "p99 µs ",
        "peak RSS MB",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "backend" else "right")
    for p in points:
        table.add_row(
            p.backend,
            f"{p.size:,}",
            f"{p.populate_seconds:,.1f}",
            f"{p.open_ms:,.0f}" if p.open_ms else "",
            f"{p.consume.p50:,.0f}",
            f"{p.consume.p99:,.0f}",
            f"{p.usage.p50:,.0f}",
            f"{p.usage.p99:,.0f}",
            f"{p.peak_rss_mb:,.0f}",
        )
    console.print(table)
    for line in curves(points):
        console.print(line, highlight=False, soft_wrap=True)


def curves(points: list[Point]) -> list[str]:
    """Per backend and call: p50 at each size, and largest / smallest against the target."""
    lines = []
    for backend, group in itertools.groupby(points, key=lambda p: p.backend):
        run = list(group)
        if len(run) < 2:
            continue
        for what in ("consume", "usage"):
            p50s = [getattr(p, what).p50 for p in run]
            ratio = p50s[-1] / p50s[0]
            steps = " → ".join(f"{v:,.0f}" for v in p50s)
            verdict = "ok" if ratio <= TARGET else "no"
            lines.append(
                f"{backend} {what} p50 µs at {', '.join(f'{p.size:,}' for p in run)}: {steps};"
                f" {run[-1].size:,} / {run[0].size:,} = {ratio:.2f}x"
                f" (target ≤ {TARGET}x: {verdict})"
            )
    return lines


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="consume and usage latency as the store grows")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="users, ascending")
    parser.add_argument("--only", default=",".join(BACKENDS), metavar=",".join(BACKENDS))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.sizes != sorted(set(args.sizes)) or any(
        s <= 0 or s % populate.USERS_PER_COMPANY for s in args.sizes
    ):
        parser.error(f"--sizes: ascending multiples of {populate.USERS_PER_COMPANY}")
    args.only = [b for b in BACKENDS if b in set(args.only.split(","))]
    if unknown := set(args.only) - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    return args


@contextmanager
def sqlite_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-size") as tmp:
        yield Path(tmp) / "size.db"


def main() -> None:
    args = arguments()
    load_before = os.getloadavg()
    started = time.monotonic()
    points: list[Point] = []
    notes: list[str] = []
    console = wide_console()

    def report(point: Point) -> None:
        points.append(point)
        console.print(
            f"{point.backend} {point.size:,} users: filled in {point.populate_seconds:,.1f} s,"
            f" consume p50 {point.consume.p50:,.0f} µs, usage p50 {point.usage.p50:,.0f} µs",
            highlight=False,
        )

    with ExitStack() as stack:
        # The SQL stores first: the memory store's gigabytes would hide their peak RSS.
        if "sqlite" in args.only:
            path = stack.enter_context(sqlite_file())
            grow_sql(
                "sqlite", f"sqlite:///{path}", lambda: populate.SqliteSql(path), args.sizes, report
            )
        if "postgres" in args.only:
            schemas = stack.enter_context(postgres_schemas(notes))
            if schemas is not None:
                schema = schemas()
                grow_sql(
                    "postgres",
                    postgres_url(schema),
                    lambda: populate.PostgresSql(POSTGRES, schema),
                    args.sizes,
                    report,
                )
        if "memory" in args.only:
            grow_memory(args.sizes, report)
    print_points(points)
    for line in notes:
        console.print(line, highlight=False, soft_wrap=True)
    seconds = time.monotonic() - started
    document: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **git_commit(),
        "machine": machine(load_before),
        "seconds": round(seconds, 1),
        "settings": {"samples": SAMPLES, "users_per_company": populate.USERS_PER_COMPANY},
        "points": [asdict(p) for p in points],
        "curves": curves(points),
        "notes": notes,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"{seconds:,.0f} s in all. JSON: {args.json}", highlight=False)


if __name__ == "__main__":
    main()
