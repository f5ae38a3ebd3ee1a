"""A new limit counts earlier usage, reading only the ledger events of its window."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest

from tokenquota import FrozenClock, Quota
from tokenquota.wire.decisions import encode_limit_status


def used(quota: Quota, subject: str, window: str) -> object:
    [found] = [
        encode_limit_status(s)
        for s in quota.usage(subject).limits
        if s.metric == "tokens" and s.window == window
    ]
    return found["used"]


def replayed(caplog: pytest.LogCaptureFixture) -> list[int]:
    """How many ledger events each backfill read, from the stores' log lines."""
    counts = []
    for record in caplog.records:
        found = re.search(r"backfilled .* from (\d+) ledger events", record.getMessage())
        if found:
            counts.append(int(found[1]))
    return counts


def test_a_new_limit_reads_only_its_window(
    quota: Quota, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    now = clock.now()  # 12:00 UTC
    for days, tokens in ((400 - 1, 1), (40, 10), (3, 100), (1, 1000)):
        quota.consume("user:a", tokens=tokens, mode="record", timestamp=now - timedelta(days=days))
    quota.consume("user:a", tokens=10_000, timestamp=now - timedelta(hours=2))
    quota.consume("user:b", tokens=7)  # another subject, today
    caplog.set_level(logging.INFO)

    quota.set_limit("user:a", "tokens", "day", 1_000_000)
    assert used(quota, "user:a", "day") == 10_000
    assert replayed(caplog) == [2]  # today's two events, not the whole ledger of six

    caplog.clear()
    quota.set_limit("user:a", "tokens", "total", 1_000_000)
    assert used(quota, "user:a", "total") == 11_111  # every event, from no replay at all
    assert replayed(caplog) == []

    caplog.clear()
    quota.set_limit("user:a", "tokens", "rolling:7d", 1_000_000)
    assert used(quota, "user:a", "rolling:7d") == 11_100
    assert replayed(caplog) == [4]  # the three within 7 days (two of them user:a's) and b's

    # Usage keeps counting as before on every newly tracked window.
    quota.consume("user:a", tokens=5)
    assert [used(quota, "user:a", w) for w in ("day", "total", "rolling:7d")] == [
        10_005,
        11_116,
        11_105,
    ]
