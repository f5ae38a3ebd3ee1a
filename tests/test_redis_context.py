"""What SQL says about a request, kept between the requests of one configuration
(``RedisMeter._context``).

The tracked windows, whether the subject is known and the charged subjects'
grants come from the configuration snapshot at the plan's version. The meter
keeps its answer per (version, charged chain), so a warm consume makes none of
the snapshot's lookups; these tests check that it is used, and that nothing a
configuration write changes is answered from it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import tokenquota
from tokenquota import FrozenClock, Quota
from tokenquota.storage import snapshot as snapshots
from tokenquota.storage.redis import RedisStore

START = datetime(2026, 3, 31, 21, 58, 59, 500_000, tzinfo=UTC)


@pytest.fixture
def quota(postgres_url: str, redis_url: str) -> Iterator[Quota]:
    with tokenquota.open(postgres_url, redis=redis_url, clock=FrozenClock(START)) as opened:
        opened.set_parents("user:ann", ["company:acme"])
        opened.set_limit("user:ann", "tokens", "day", 1_000)
        yield opened


def test_a_warm_request_reads_no_configuration_and_a_write_is_seen(
    quota: Quota, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = quota.store
    assert isinstance(store, RedisStore)
    lookups: list[Any] = []
    cached = snapshots.View.cached

    def counted(view: snapshots.View, key: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(key)
        return cached(view, key, *args, **kwargs)

    monkeypatch.setattr(snapshots.View, "cached", counted)
    assert quota.consume("user:ann", tokens=10).allowed
    lookups.clear()
    assert quota.consume("user:ann", tokens=10).allowed
    assert not [k for k in lookups if k[0] in ("known", "tracked", "grants")]

    # a grant is a configuration write: the next request sees the wallet
    quota.grant("user:ann", 5)
    assert quota.consume("user:ann", tokens=10, credits=4).allowed
    assert not quota.consume("user:ann", tokens=10, credits=2).allowed  # 1 left
    assert quota.consume("user:ann", tokens=10, credits=1).allowed

    # a new limit tracks a window nothing counted before (filled from the ledger:
    # 40 tokens so far): the next request counts in it
    quota.set_limit("company:acme", "tokens", "rolling:2h", 65)
    assert quota.consume("user:ann", tokens=20).allowed
    assert not quota.consume("user:ann", tokens=10).allowed
    (rolling,) = quota.usage("company:acme").limits
    assert rolling.used == 60
