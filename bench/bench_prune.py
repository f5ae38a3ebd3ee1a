"""Does pruning slow decisions? Consumes with and without a pruning pass beside them.

A store is filled with weeks of old usage (minute, hour and day buckets,
idempotency answers, reservations) under a frozen clock, then consumes are
timed in alternating phases: alone, and while a pruning pass (with the
service's pause between batches; ``--pause-ms 0`` for the worst case) deletes
in another thread of the same process. The ratio is the consume rate beside
pruning / alone, from the same run; the batch durations say how long one
batch takes (its transaction, and any wait for the lock it needs).

    .venv/bin/python -m bench.bench_prune --only sqlite,postgres
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import tokenquota
from bench.common import Figures, percentile
from bench.stores import postgres_schemas, postgres_url
from tokenquota import FrozenClock
from tokenquota.domain.retention import MIN_IDEMPOTENCY, Horizons
from tokenquota.engine.retention import Retention

START = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = [
    {"metric": "tokens", "window": w, "limit": 10**15} for w in ("minute", "hour", "day", "month")
]


def fill(quota: tokenquota.Quota, clock: FrozenClock, calls: int) -> None:
    quota.put_subject("user:alice", parents=["company:acme"])
    quota.set_limits("user:alice", LIMITS)
    quota.set_limits("company:acme", LIMITS)
    for n in range(calls):
        quota.consume("user:alice", {"tokens": 10}, idempotency_key=f"old-{n}")
        if n % 10 == 0:
            quota.reserve("user:alice", {"tokens": 1}, ttl=30)
        clock.advance(timedelta(minutes=3))
    clock.advance(timedelta(days=3))


def phase(quota: tokenquota.Quota, seconds: float) -> Figures:
    latencies: list[float] = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        quota.consume("user:alice", {"tokens": 10})
        latencies.append(time.perf_counter() - t)
    return Figures.of(latencies, time.perf_counter() - began)


def run(
    name: str, url: str, calls: int, seconds: float, rounds: int, batch: int, pause: float
) -> None:
    clock = FrozenClock(START)
    with tokenquota.open(url, clock=clock, retention=timedelta(days=1)) as quota:
        fill(quota, clock, calls)
        retention = Retention(
            quota, Horizons(backdate=timedelta(days=1), idempotency=MIN_IDEMPOTENCY), batch=batch
        )
        durations: list[float] = []
        removed = 0
        alone: list[Figures] = []
        beside: list[Figures] = []
        for _ in range(rounds):
            alone.append(phase(quota, seconds))
            stop = threading.Event()

            def prune(stop: threading.Event = stop) -> None:
                nonlocal removed
                batches = retention.batches()
                while not stop.is_set():
                    t = time.perf_counter()
                    got = next(batches, None)
                    if got is None:
                        return
                    durations.append(time.perf_counter() - t)
                    removed += got[1]
                    stop.wait(pause)

            worker = threading.Thread(target=prune)
            worker.start()
            beside.append(phase(quota, seconds))
            stop.set()
            worker.join()
        a = sum(f.rate for f in alone) / rounds
        b = sum(f.rate for f in beside) / rounds
        ordered = sorted(durations) or [0.0]
        print(
            f"{name:9} consumes/s alone {a:7.0f}  beside pruning {b:7.0f}  ratio {b / a:4.2f}  "
            f"p99 µs alone {max(f.p99 for f in alone):7.0f} "
            f"beside {max(f.p99 for f in beside):7.0f}"
            f"  | {len(durations)} batches of ≤{batch}, {removed} removed, batch p50 "
            f"{percentile(ordered, 0.5) * 1e3:.1f} ms p99 {percentile(ordered, 0.99) * 1e3:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="sqlite,postgres")
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--pause-ms", type=float, default=10, help="between batches (the service's)"
    )
    args = parser.parse_args()
    for name in args.only.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/q.db"
                run(
                    name,
                    url,
                    args.calls,
                    args.seconds,
                    args.rounds,
                    args.batch,
                    args.pause_ms / 1000,
                )
        elif name == "postgres":
            notes: list[str] = []
            with postgres_schemas(notes) as fresh:
                if fresh is None:
                    print(*notes)
                    continue
                url = postgres_url(fresh())
                run(
                    name,
                    url,
                    args.calls,
                    args.seconds,
                    args.rounds,
                    args.batch,
                    args.pause_ms / 1000,
                )
            print(*notes)


if __name__ == "__main__":
    main()
