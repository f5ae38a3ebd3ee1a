"""Authentication without a store read per request, and the bound on what that costs.

Two live servers on one SQLite file stand for two replicas; they share one
``FrozenClock``, which the tests move instead of sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError as SettingsError

import tokenquota
from tests.api.conftest import ADMIN_KEY, ServerFactory
from tokenquota import FrozenClock
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.engine.keycache import KeyCache
from tokenquota.settings import Settings

START = datetime(2026, 3, 10, 12, tzinfo=UTC)


def plans(url: str, key: str) -> int:
    response = httpx.get(f"{url}/v1/plans", headers={"X-API-Key": key}, timeout=30)
    return response.status_code


def test_a_key_revoked_on_one_replica_is_refused_on_another_within_the_bound(
    make_api: ServerFactory, tmp_path: Path
) -> None:
    clock = FrozenClock(START)
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    one = make_api(clock=clock, db=db)
    other = make_api(clock=clock, db=db, key_cache_seconds=0.5)
    key, secret = one.quota.create_key("staff")
    assert plans(one.url, secret) == 200
    assert plans(other.url, secret) == 200

    with httpx.Client(base_url=one.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        assert admin.delete(f"/v1/keys/{key.id}").status_code == 204

    assert plans(one.url, secret) == 401  # the engine that revoked it: at once
    # The other replica still trusts what it read: the store is not asked again ...
    clock.advance(seconds=0.499)
    assert plans(other.url, secret) == 200
    # ... until its bound has passed.
    clock.advance(seconds=0.001)
    assert plans(other.url, secret) == 401
    assert plans(one.url, secret) == 401


def test_a_wrong_secret_for_a_cached_key_is_refused(make_api: ServerFactory) -> None:
    api = make_api(clock=FrozenClock(START))
    key, secret = api.quota.create_key("service")
    assert plans(api.url, secret) == 200
    assert key.id in [k.id for k in api.quota.list_keys().items]

    wrong = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")
    assert plans(api.url, wrong) == 401
    assert plans(api.url, secret) == 200
    assert api.quota.authenticate(wrong) is None
    assert api.quota.authenticate(secret) == key


def test_the_library_revokes_at_once_and_a_clock_set_back_is_not_trusted() -> None:
    clock = FrozenClock(START)
    with tokenquota.open("memory://", clock=clock) as quota:
        key, secret = quota.create_key("service")
        assert quota.authenticate(secret) == key
        assert len(quota.keys) == 1
        quota.revoke_key(key.id)
        assert quota.authenticate(secret) is None

        other, other_secret = quota.create_key("service")
        assert quota.authenticate(other_secret) == other
        clock.set(datetime(2026, 3, 10, 11, tzinfo=UTC))
        assert quota.keys.get(other.id) is None  # read before "now": dropped, read again
        assert quota.authenticate(other_secret) == other


def test_unknown_keys_are_not_cached() -> None:
    with tokenquota.open("memory://", clock=FrozenClock(START)) as quota:
        for i in range(50):
            assert quota.authenticate(f"tq_{i:016x}_" + "x" * 43) is None
        assert len(quota.keys) == 0


def test_the_cache_holds_at_most_its_size_dropping_the_least_recently_used() -> None:
    clock = FrozenClock(START)
    cache = KeyCache(clock, 1.0, size=3)
    keys = [ApiKey(f"{i:016x}", Role.SERVICE, None, None, START) for i in range(5)]
    for key in keys[:3]:
        cache.put(key.id, (key, "hash"))
    assert cache.get(keys[0].id) == (keys[0], "hash")  # now the most recently used
    for key in keys[3:]:
        cache.put(key.id, (key, "hash"))

    assert len(cache) == 3
    assert [k.id for k in keys if cache.get(k.id) is not None] == [
        keys[0].id,
        keys[3].id,
        keys[4].id,
    ]


def test_zero_seconds_asks_the_store_every_time() -> None:
    with tokenquota.open("memory://", clock=FrozenClock(START), key_cache_seconds=0) as quota:
        key, secret = quota.create_key("service")
        assert quota.authenticate(secret) == key
        assert len(quota.keys) == 0


@pytest.mark.parametrize("seconds", [-0.1, 1.5, 60])
def test_the_bound_is_at_most_one_second(seconds: float) -> None:
    with pytest.raises(ValidationError) as caught:
        tokenquota.open("memory://", key_cache_seconds=seconds)
    assert caught.value.field == "key_cache_seconds"
    with pytest.raises(SettingsError) as invalid:
        Settings(key_cache_seconds=seconds)
    assert invalid.value.errors()[0]["loc"] == ("key_cache_seconds",)
