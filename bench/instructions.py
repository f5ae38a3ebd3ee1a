"""Instructions per in-process consume, counted by valgrind: repeatable on a busy machine.

Run with ``.venv/bin/python -m bench.instructions [--only memory,sqlite] [--calls N]``
(``PYTHONPATH=<tree>/src`` to count another tree). For each backend it runs the
bench's shape (``bench.common.opened``: ``user:alice`` with tokens limits per
minute, hour and day in ``company:acme`` with a monthly one) under
``valgrind --tool=callgrind`` twice, with 0 and with N timed consumes after the
same setup and warm-up, and prints the difference divided by N: the
instructions one consume executes, Python and C alike (SQLite's own code too,
never the disk's wait). It does the same for the row's floor (the ``limits``
library; the raw sqlite3 transaction; one ``EVALSHA`` of ``bench/floor.lua``),
so a ratio is at hand.

``redis`` (PostgreSQL + Redis, on the bench's servers) counts this process
only: the client's side of a consume, and the mover moving its event into
PostgreSQL (the store is closed inside the count, which moves what is left),
never the work inside ``redis-server`` or PostgreSQL. The script's own time is
measured apart (``INFO commandstats``, docs/performance.md).

Rates on a shared 2-CPU machine move with its load; these counts do not
(the children run with ``PYTHONHASHSEED=0``: with random string hashes, dict
and set layouts moved a memory consume's count by 2.5 % between runs of one
tree), so a change of a few percent shows. Asserts nothing; slow (minutes
per backend under valgrind).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import WARMUP

BACKENDS = ("memory", "sqlite", "redis")


def _nothing() -> None:
    pass


def _child(backend: str, what: str, calls: int) -> None:
    """Inside valgrind: set up, warm up, then ``calls`` calls of ``what``."""
    if backend == "redis":
        _redis_child(what, calls)
        return
    from bench.common import consumer, opened
    from bench.floors import limits_floor, sqlite_floor

    with tempfile.TemporaryDirectory() as tmp:
        if what == "floor":
            once: Callable[[], None]
            close: Callable[[], None] = _nothing
            if backend == "memory":
                once = limits_floor()
            else:
                once, close = sqlite_floor(Path(tmp) / "f.db")
            _repeat(once, calls)
            close()
            return
        url = "memory://" if backend == "memory" else f"sqlite:///{tmp}/q.db"
        with opened(url) as quota:
            _repeat(consumer(quota), calls)


def _redis_child(what: str, calls: int) -> None:
    """PostgreSQL + Redis on a throwaway schema and key prefix (bench/stores.py)."""
    from bench.common import consumer, opened
    from bench.floors import redis_floor
    from bench.stores import postgres_schemas, postgres_url, redis_prefixes, redis_url

    notes: list[str] = []
    with postgres_schemas(notes) as schemas, redis_prefixes(notes) as prefixes:
        if schemas is None or prefixes is None:
            raise RuntimeError("; ".join(notes))
        if what == "floor":
            once, close = redis_floor(prefixes())
            _repeat(once, calls)
            close()
            return
        with opened(postgres_url(schemas()), redis_url(prefixes())) as quota:
            _repeat(consumer(quota), calls)


def _repeat(once: Callable[[], None], calls: int) -> None:
    for _ in range(WARMUP):
        once()
    for _ in range(calls):
        once()


def _count(backend: str, what: str, calls: int) -> int:
    """Instructions of a whole child run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-m",
                "bench.instructions",
                "--child",
                f"{backend}:{what}:{calls}",
            ],
            capture_output=True,
            text=True,
            check=True,
            # One hash seed: string hashes move dict and set layouts, and so the
            # count, by a few percent between runs of one tree otherwise.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count from valgrind: {done.stderr[-500:]}")
    return int(found.group(1))


def per_call(backend: str, what: str, calls: int) -> float:
    """Instructions of one call: N calls less none, over N."""
    return (_count(backend, what, calls) - _count(backend, what, 0)) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BACKENDS))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-floor", action="store_true", help="count the rows only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, what, calls = args.child.split(":")
        _child(backend, what, int(calls))
        return
    for backend in args.only.split(","):
        row = per_call(backend, "row", args.calls)
        if args.no_floor:
            print(f"{backend:8s} consume {row:11,.0f} instructions", flush=True)
            continue
        floor = per_call(backend, "floor", args.calls)
        print(
            f"{backend:8s} consume {row:11,.0f} instructions   floor {floor:9,.0f}"
            f"   floor/consume {floor / row:5.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
