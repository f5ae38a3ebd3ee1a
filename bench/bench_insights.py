"""Top consumers (engine/insights.py) against the ledger read it replaces on a page.

The floor is ``history(org, granularity="month")`` over the same month: it
reads the same events of the same subtree (streamed in batches and summed in
Python). The rows are the ranking of the org's children (``parent=``) and of
every user (no parent: every charged subject), each summed by the database
(SQL) or by a walk of the ledger (memory). Floor and row alternate, and the
ratio (row p50 / floor p50, lower is better) is what to read.

    .venv/bin/python -m bench.bench_insights [--events 5000] [--only memory,sqlite,postgres]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import tokenquota
from bench.common import POSTGRES, alternated, clock
from bench.stores import postgres_schemas, postgres_url
from tokenquota.engine.insights import Insights

ORGS = 5
USERS_PER_ORG = 20
CALLS = 30


def populate(quota: tokenquota.Quota, events: int) -> None:
    for o in range(ORGS):
        for u in range(USERS_PER_ORG):
            quota.put_subject(f"user:u{o}-{u}", parents=[f"org:o{o}"])
    users = ORGS * USERS_PER_ORG
    for i in range(events):
        n = i % users
        quota.consume(
            f"user:u{n // USERS_PER_ORG}-{n % USERS_PER_ORG}",
            tokens=1 + i % 97,
            model=("a", "b", "c")[i % 3],
            mode="record",
        )


def rows(quota: tokenquota.Quota) -> dict[str, Callable[[], object]]:
    insights = Insights(quota.store, quota.clock)
    return {
        "children of one org": lambda: insights.top_consumers("tokens", parent="org:o0"),
        "every user": lambda: insights.top_consumers("tokens", kind="user"),
    }


def history(quota: tokenquota.Quota) -> Callable[[], object]:
    return lambda: quota.history("org:o0", granularity="month")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--only", default="memory,sqlite,postgres")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    notes: list[str] = []
    print(f"{args.events} events, {ORGS} orgs x {USERS_PER_ORG} users; p50 in ms")
    print(f"{'backend':10} {'row':22} {'floor p50':>10} {'row p50':>10} {'row / floor':>12}")
    with tempfile.TemporaryDirectory() as tmp, postgres_schemas(notes) as fresh:
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        if fresh is not None:
            urls["postgres"] = postgres_url(fresh())
        for backend, url in urls.items():
            if backend not in wanted:
                continue
            quota = tokenquota.open(url, clock=clock())
            try:
                populate(quota, args.events)
                floor = history(quota)
                for name, row in rows(quota).items():
                    f, r = alternated(floor, row, CALLS)
                    print(
                        f"{backend:10} {name:22} {f.p50 / 1e3:10.2f} {r.p50 / 1e3:10.2f}"
                        f" {r.p50 / f.p50:12.2f}"
                    )
            finally:
                quota.close()
    for note in notes:
        print("note:", note)
    if "postgres" in wanted and "postgres" not in urls:
        print(f"PostgreSQL at {POSTGRES} was not reachable")


if __name__ == "__main__":
    main()
