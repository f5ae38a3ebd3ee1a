"""Consecutive consumes of a group-commit batch decided together (storage/sql/batch.py).

On PostgreSQL a run of consumes in one batch is read in one round trip,
decided in order in memory and written in one: it must answer exactly as the
same consumes decided one after another would (admissions, denials, replays,
conflicts, created subjects, burned credits, alert events), admit exactly the
limit under threads and processes on one series, and lose nothing it
acknowledged when its process is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START
from tests.test_config_snapshot import FOREVER, snapshot_of
from tests.test_group_commit import REPO, group, wait_until, writers_held
from tests.workers import drain, drain_in_process
from tokenquota import FrozenClock, Quota
from tokenquota.storage.sql import batch
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.hot import HotTx

LIMIT = 100


def prepare(quota: Quota, p: str) -> None:
    """One company with a tight daily limit and alert marks, one user with credits."""
    quota.set_parents(f"user:{p}a", [f"company:{p}acme"])
    quota.set_limit(f"company:{p}acme", "tokens", "day", LIMIT, thresholds=[50, 80, 100])
    quota.grant(f"user:{p}a", 50)


def calls(quota: Quota, p: str) -> list[Callable[[], Any]]:
    """Consumes in an order where each answer depends on the ones before it."""
    a, new = f"user:{p}a", f"user:{p}new"
    return [
        lambda: quota.consume(a, tokens=30, idempotency_key="k1"),
        lambda: quota.consume(a, tokens=30, idempotency_key="k1"),  # replay
        lambda: quota.consume(a, tokens=31, idempotency_key="k1"),  # conflict
        lambda: quota.consume(a, tokens=25),  # 55: crosses 50
        lambda: quota.consume(new, tokens=5),  # creates the subject
        lambda: quota.consume(new, tokens=5),  # now known
        lambda: quota.consume(a, tokens=30),  # 85: crosses 80
        lambda: quota.consume(a, tokens=20),  # 105: denied
        lambda: quota.consume(a, tokens=15),  # 100: crosses 100
        lambda: quota.consume(a, tokens=1),  # denied
        lambda: quota.consume(a, credits=20),
        lambda: quota.consume(a, credits=20),
        lambda: quota.consume(a, credits=20),  # 60 of 50 credits: denied
        lambda: quota.consume(a, tokens=5, idempotency_key="k2"),  # denied, not remembered
        lambda: quota.consume(a, tokens=5, idempotency_key="k2"),  # decided again
        lambda: quota.consume(a, tokens=0, idempotency_key="k3"),
        lambda: quota.consume(a, tokens=0, idempotency_key="k3"),  # replay of an admission
    ]


def outcome(result: Any, ids: dict[int, int]) -> Any:
    """A call's answer without what differs between two stores: event ids become ranks."""
    if isinstance(result, Exception):
        return type(result).__name__
    event = None if result.event_id is None else ids.setdefault(result.event_id, len(ids))
    statuses = [(s.used, s.limit, s.remaining) for s in result.limits]
    return (result.allowed, result.replayed, event, statuses, result.retry_after)


def alerts_of(quota: Quota, p: str) -> list[tuple[Any, ...]]:
    a = t.alert_events.c
    db: Any = quota.store.db  # type: ignore[attr-defined]
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(a.kind, a.subject, a.metric, a.window, a.threshold, a.used, a.limit_value)
            .where(a.subject.like(f"%:{p}%"))
            .order_by(a.id)
        ).all()
    return [(r[0], r[1].replace(p, ""), *r[2:]) for r in rows]


def state_of(quota: Quota, p: str) -> tuple[Any, ...]:
    (company,) = quota.usage(f"company:{p}acme").limits
    (grant,) = quota.grants(f"user:{p}a")
    events = list(quota.iter_events(subject=f"company:{p}acme"))
    return company.used, grant.remaining, len(events), quota.get_subject(f"user:{p}new") is not None


def test_a_batch_of_consumes_answers_as_the_same_consumes_one_by_one(postgres_url: str) -> None:
    quota = tokenquota.open(postgres_url, clock=FrozenClock(START))
    try:
        prepare(quota, "s")
        prepare(quota, "b")
        # One after another: each its own transaction.
        ids: dict[int, int] = {}
        sequential = []
        for call in calls(quota, "s"):
            try:
                sequential.append(outcome(call(), ids))
            except Exception as exc:
                sequential.append(outcome(exc, ids))

        # The same calls queued behind a held store, in this order, into one batch.
        batched: list[Callable[[], Any]] = calls(quota, "b")
        results: list[Any] = [None] * len(batched)

        def run(i: int) -> None:
            try:
                results[i] = batched[i]()
            except Exception as exc:
                results[i] = exc

        commits = group(quota)
        before = commits.batches
        sent = [0]
        plain = HotTx.run

        def counted(self: HotTx, stmts: Any) -> list[Any]:
            if self.pending or stmts:
                sent[0] += 1
            return plain(self, stmts)

        HotTx.run = counted  # type: ignore[method-assign]
        try:
            with writers_held(postgres_url):
                leader = threading.Thread(target=run, args=(0,))
                leader.start()
                wait_until(lambda: commits.batches == before + 1, "the leader's batch")
                rest: list[threading.Thread] = []
                for i in range(1, len(batched)):  # one by one: the batch keeps this order
                    rest.append(threading.Thread(target=run, args=(i,)))
                    rest[-1].start()
                    wait_until(lambda: commits.waiting == len(rest), f"call {i} to queue")
            for thread in [leader, *rest]:
                thread.join(60)
        finally:
            HotTx.run = plain  # type: ignore[method-assign]
        assert commits.batches == before + 2
        assert commits.largest == len(batched) - 1
        # The leader's own: reads, then writes with COMMIT; the batch of 16 the same.
        assert sent[0] == 4

        ids = {}
        assert [outcome(r, ids) for r in results] == sequential
        assert alerts_of(quota, "b") == alerts_of(quota, "s")
        assert [a[4] for a in alerts_of(quota, "b") if a[0] == "threshold.crossed"] == [
            50,
            80,
            100,
        ]
        assert state_of(quota, "b") == state_of(quota, "s")
        # The answers the run stored: a retry is replayed from the store, as after one by one.
        for p in ("s", "b"):
            again = quota.consume(f"user:{p}a", tokens=30, idempotency_key="k1")
            assert again.replayed, p
        ids = {}
        assert outcome(quota.consume("user:ba", tokens=0, idempotency_key="k3"), ids) == outcome(
            quota.consume("user:sa", tokens=0, idempotency_key="k3"), ids
        )
        links = {e.id for s in ("user:ba", "user:bnew") for e in quota.iter_events(subject=s)}
        assert links >= {r.event_id for r in results if getattr(r, "event_id", None)}
    finally:
        quota.close()


def test_a_stale_plan_in_a_batch_is_refused_alone_and_planned_again(postgres_url: str) -> None:
    """Plans of an old configuration in a run: each is refused and planned again alone."""
    writer = tokenquota.open(postgres_url, clock=FrozenClock(START))
    quota = tokenquota.open(postgres_url, clock=FrozenClock(START))
    try:
        writer.set_limit("user:y", "tokens", "day", 100)
        assert quota.consume("user:y", tokens=1).allowed  # warm: plans carry the version
        snapshot_of(quota).ttl = FOREVER  # only a refused step makes it ask again
        writer.set_limit("user:y", "tokens", "day", 25)  # another replica lowers it
        commits = group(quota)
        before = commits.batches
        results: dict[str, Any] = {}
        ran = [0]
        plain = batch.run_debits

        def counting(*args: Any) -> None:
            ran[0] += 1
            plain(*args)

        def call(name: str, tokens: int) -> None:
            results[name] = quota.consume("user:y", tokens=tokens)

        batch.run_debits = counting  # type: ignore[assignment]
        try:
            with writers_held(postgres_url):
                leader = threading.Thread(target=call, args=("lead", 1))
                leader.start()
                wait_until(lambda: commits.batches == before + 1, "the leader's batch")
                rest = [threading.Thread(target=call, args=(f"y{i}", 10)) for i in range(4)]
                for thread in rest:
                    thread.start()
                # Planned on the old snapshot (limit 100), queued into one run.
                wait_until(lambda: commits.waiting == len(rest), "the callers to queue")
            for thread in [leader, *rest]:
                thread.join(60)
        finally:
            batch.run_debits = plain
        assert ran[0] >= 1, "the queued plans were not decided as a run"
        assert results["lead"].allowed
        # Planned again under 25 with 2 used: two of the four 10s fit, never four.
        assert sum(10 for i in range(4) if results[f"y{i}"].allowed) == 20
        (status,) = quota.usage("user:y").limits
        assert (status.limit, status.used) == (25, 22)
    finally:
        quota.close()
        writer.close()


# exact admission on one series: threads and processes ------------------------------------
SERIES_LIMIT = 700
PROCESSES = 3
THREADS = 12


@pytest.mark.slow
def test_threads_in_several_processes_on_one_series_admit_exactly_the_limit(
    postgres_url: str,
) -> None:
    with tokenquota.open(postgres_url) as quota:
        quota.set_limit("user:hot", "tokens", "total", SERIES_LIMIT)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_in_process, postgres_url, "user:hot", THREADS)
            for _ in range(PROCESSES)
        ]
        admitted = sum(f.result(timeout=300) for f in futures)
    assert admitted == SERIES_LIMIT
    with tokenquota.open(postgres_url) as quota:
        (status,) = quota.usage("user:hot").limits
        assert status.used == SERIES_LIMIT
        events = list(quota.iter_events(subject="user:hot"))
        assert sum(e.amounts.to_numbers()["tokens"] for e in events) == SERIES_LIMIT


def test_threads_in_one_process_on_one_series_admit_exactly_the_limit(postgres_url: str) -> None:
    with tokenquota.open(postgres_url) as quota:
        quota.set_limit("user:hot", "tokens", "total", SERIES_LIMIT)
        meter: Any = quota.store.meter  # type: ignore[attr-defined]
        ran = [0]
        plain = batch.run_debits

        def counting(*args: Any) -> None:
            ran[0] += 1
            plain(*args)

        batch.run_debits = counting  # type: ignore[assignment]
        try:
            barrier = threading.Barrier(32)
            with ThreadPoolExecutor(32) as pool:
                admitted = sum(pool.map(lambda _: drain(quota, "user:hot", barrier), range(32)))
        finally:
            batch.run_debits = plain
        assert admitted == SERIES_LIMIT
        assert ran[0] > 0, "no run of consumes was decided together"
        assert meter.group.largest > 1
        (status,) = quota.usage("user:hot").limits
        assert status.used == SERIES_LIMIT


# SIGKILL: nothing acknowledged is lost, every caller on one series -------------------------
KILLED = """
import sys, threading
from datetime import datetime
import tokenquota
clock = tokenquota.FrozenClock(datetime.fromisoformat(sys.argv[2]))
quota = tokenquota.open(sys.argv[1], clock=clock)
commits = quota.store.meter.group
out = threading.Lock()
def work(t):
    for i in range(100000):
        key = f"{t}-{i}"
        decision = quota.consume("user:one", tokens=t + 1, idempotency_key=key)
        with out:
            print(key, decision.event_id, t + 1, commits.largest, flush=True)
for t in range(int(sys.argv[3])):
    threading.Thread(target=work, args=(t,)).start()
"""


def test_a_killed_process_on_one_series_loses_no_acknowledged_decision(postgres_url: str) -> None:
    url = postgres_url
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        quota.set_limit("user:one", "tokens", "total", 10**12)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, START.isoformat(), "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acks: list[tuple[str, int, int, int]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            acks.append((words[0], int(words[1]), int(words[2]), int(words[3])))
            if len(acks) >= 300:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert len(acks) >= 300, err[-2000:]
    assert max(a[3] for a in acks) > 1, "no decisions shared a commit before the kill"
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        stored = {e.idempotency_key: e for e in quota.iter_events(subject="user:one")}
        for key, event_id, tokens, _ in acks:
            assert key in stored, f"acknowledged {key} (event {event_id}) was lost"
            assert stored[key].id == event_id
            assert stored[key].amounts.to_numbers()["tokens"] == tokens
        (status,) = quota.usage("user:one").limits
        assert status.used == sum(e.amounts.to_numbers()["tokens"] for e in stored.values())
        key, event_id, tokens, _ = acks[-1]
        again = quota.consume("user:one", tokens=tokens, idempotency_key=key)
        assert (again.replayed, again.event_id) == (True, event_id)
