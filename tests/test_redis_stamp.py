"""A Redis keyspace belongs to one deployment (issue 11, item 7).

Two deployments (two SQL databases) on one Redis keyspace would move each
other's events into their own ledgers. The first store stamps the keyspace
with its deployment id; a store of another deployment refuses to start.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import tokenquota
from tests.services import require_postgres
from tests.test_redis import forget_everything, store_of
from tokenquota.storage.redis.store import KeyspaceTaken


@pytest.fixture(params=["redis", "cluster"])
def redis(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
def other_postgres_url() -> Iterator[str]:
    """A second deployment's database: another fresh schema."""
    base = require_postgres()
    schema = f"tq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_second_deployment_on_the_same_keyspace_refuses_to_start(
    postgres_url: str, other_postgres_url: str, redis: str
) -> None:
    with tokenquota.open(postgres_url, redis=redis) as first:
        first.consume("user:ann", tokens=5, idempotency_key="a")
        mine = store_of(first).deployment_id
        with pytest.raises(KeyspaceTaken) as refused:
            tokenquota.open(other_postgres_url, redis=redis)
        message = str(refused.value)
        assert mine in message
        assert "?prefix=" in message
        # Nothing of the first deployment moved anywhere else; it keeps working.
        assert first.consume("user:ann", tokens=5).allowed
    # The same database opens again, as every replica and restart does.
    with tokenquota.open(postgres_url, redis=redis) as again:
        assert store_of(again).deployment_id == mine
        assert again.consume("user:ann", tokens=5, idempotency_key="a").replayed


def test_the_refused_deployment_names_its_own_id_too(
    postgres_url: str, other_postgres_url: str, redis: str
) -> None:
    with tokenquota.open(other_postgres_url, redis=f"{redis}x"):
        pass  # gives the second database its id, on a keyspace of its own
    engine = sa.create_engine(other_postgres_url)
    with engine.connect() as conn:
        theirs = conn.execute(
            sa.text("SELECT value FROM meta WHERE key = 'deployment_id'")
        ).scalar()
    engine.dispose()
    try:
        with (
            tokenquota.open(postgres_url, redis=redis),
            pytest.raises(KeyspaceTaken, match=str(theirs)),
        ):
            tokenquota.open(other_postgres_url, redis=redis)
    finally:
        forget_everything(f"{redis}x")


def test_a_keyspace_from_before_stamps_is_refused_to_another_deployment(
    postgres_url: str, other_postgres_url: str, redis: str
) -> None:
    with tokenquota.open(postgres_url, redis=redis) as first:
        store = store_of(first)
        store.redis.delete(store.layout.deployment())  # as written before stamps existed
        with pytest.raises(KeyspaceTaken, match="unstamped"):
            tokenquota.open(other_postgres_url, redis=redis)
    with tokenquota.open(postgres_url, redis=redis) as again:  # its owner claims it
        assert again.consume("user:ann", tokens=1).allowed


def test_a_rebuilt_keyspace_is_stamped_again(postgres_url: str, redis: str) -> None:
    with tokenquota.open(postgres_url, redis=redis) as first:
        first.consume("user:ann", tokens=5)
        store_of(first).flush()
        forget_everything(redis)
        first.rebuild()
        store = store_of(first)
        assert store.redis.get(store.layout.deployment()).decode() == store.deployment_id
