"""Races: concurrent callers never overspend, and one key charges once."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

import tokenquota
from tests.conftest import store_url
from tests.workers import drain, drain_in_process, retry_in_process
from tokenquota import Quota

LIMIT = 10_000
LAST = 1_000


def prepare(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_parents("user:bob", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", LIMIT)
    quota.consume("user:alice", tokens=LIMIT - LAST)


def assert_spent_exactly(quota: Quota) -> None:
    (status,) = quota.usage("company:acme").limits
    assert status.used == LIMIT
    ledger = sum(
        e.amounts.to_numbers()["tokens"] for e in quota.iter_events(subject="company:acme")
    )
    assert ledger == LIMIT


def test_sixteen_threads_race_for_the_last_tokens(quota: Quota) -> None:
    prepare(quota)
    barrier = threading.Barrier(16)
    subjects = ["user:alice", "user:bob"] * 8
    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(lambda s: drain(quota, s, barrier), subjects))
    assert admitted == LAST
    assert_spent_exactly(quota)


@pytest.mark.slow
def test_four_processes_race_on_one_sqlite_file(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    with tokenquota.open(url) as quota:
        prepare(quota)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_in_process, url, subject, 4)
            for subject in ("user:alice", "user:bob", "user:alice", "user:bob")
        ]
        admitted = sum(f.result(timeout=120) for f in futures)
    assert admitted == LAST
    with tokenquota.open(url) as quota:
        assert_spent_exactly(quota)


def test_twenty_concurrent_retries_of_one_key_charge_once(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", LIMIT)
    barrier = threading.Barrier(20)

    def retry(_: int) -> tokenquota.Decision:
        barrier.wait()
        return quota.consume("user:alice", tokens=100, idempotency_key="req-1")

    with ThreadPoolExecutor(20) as pool:
        decisions = list(pool.map(retry, range(20)))
    assert len({d.event_id for d in decisions}) == 1
    assert sum(not d.replayed for d in decisions) == 1
    assert quota.events(subject="user:alice").total == 1
    assert quota.usage("user:alice").limits[0].used == 100


@pytest.mark.slow
def test_retries_from_several_processes_charge_once(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    with tokenquota.open(url) as quota:
        quota.set_limit("user:alice", "tokens", "day", LIMIT)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        results = list(pool.map(retry_in_process, [url] * 8, ["user:alice"] * 8, ["k"] * 8))
    assert len({event_id for event_id, _ in results}) == 1
    assert sum(not replayed for _, replayed in results) == 1
    with tokenquota.open(url) as quota:
        assert quota.usage("user:alice").limits[0].used == 100
