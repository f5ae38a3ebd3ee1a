"""The reused PostgreSQL schemas of the tests are as good as fresh ones (tests/services.py).

Every test on PostgreSQL trusts that its schema holds exactly what the
migrations left, and that nothing of an earlier test can reach it. These
tests fill a schema the way the product does, give it back, and compare what
the next test gets with a schema migrated just now: tables, rows, sequences.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START
from tests.services import PostgresSchemas, require_postgres
from tokenquota import FrozenClock


@pytest.fixture
def schemas() -> Iterator[PostgresSchemas]:
    """A pool of its own, so what it hands out next is known."""
    pool = PostgresSchemas(require_postgres())
    try:
        yield pool
    finally:
        pool.close()


def schema_of(url: str) -> str:
    return url.rsplit("application_name=", 1)[1]


def oid_of(engine: sa.Engine, url: str) -> int | None:
    """The schema's identity in PostgreSQL, which a rename keeps: None once dropped."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT oid FROM pg_namespace WHERE nspname = :s"), {"s": schema_of(url)}
        ).scalar()
    return None if found is None else int(found)


def state(engine: sa.Engine, schema: str) -> dict[str, Any]:
    """Everything a store could tell apart: each table's rows and each sequence's next value."""
    found: dict[str, Any] = {}
    with engine.begin() as conn:
        for table in conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
        ).scalars():
            rows = conn.execute(sa.text(f'SELECT * FROM "{schema}"."{table}"')).all()
            found[table] = sorted(map(repr, rows))
        for sequence in conn.execute(
            sa.text("SELECT sequencename FROM pg_sequences WHERE schemaname = :s"), {"s": schema}
        ).scalars():
            found[f"next {sequence}"] = conn.execute(
                sa.text("SELECT nextval(CAST(:q AS regclass))"), {"q": f'"{schema}"."{sequence}"'}
            ).scalar()
    return found


def fill(url: str) -> None:
    """Rows in every kind of table: subjects, rules, plans, the ledger, holds, keys, audit."""
    with tokenquota.open(url, clock=FrozenClock(START), timezone="Europe/Paris") as quota:
        quota.set_parents("user:ann", ["company:acme"])
        quota.set_limit("company:acme", "tokens", "day", 1_000)
        quota.set_limit("user:ann", "tokens", "total", 500)
        quota.set_limit("user:ann", "concurrent_requests", None, 2)
        quota.create_plan("Gold", [{"metric": "tokens", "window": "month", "limit": 10}])
        quota.consume("user:ann", tokens=40, idempotency_key="k")
        quota.reserve("user:ann", tokens=5)
        quota.acquire("user:ann")
        quota.grant("user:ann", credits="2.5")
        quota.create_key("service")


def test_a_reset_schema_cannot_be_told_from_a_fresh_one(schemas: PostgresSchemas) -> None:
    url = schemas.take()
    used = oid_of(schemas.admin, url)
    fill(url)
    assert state(schemas.admin, schema_of(url))["events"]  # the filling did write
    schemas.give_back(url)
    again = schemas.take()
    assert oid_of(schemas.admin, again) == used  # reused, not migrated anew...
    assert schema_of(again) != schema_of(url)  # ...under a name the last test never had
    assert oid_of(schemas.admin, url) is None
    fresh = schemas.take()
    assert oid_of(schemas.admin, fresh) != used
    assert state(schemas.admin, schema_of(again)) == state(schemas.admin, schema_of(fresh))


def test_a_reused_schema_behaves_as_a_new_store(schemas: PostgresSchemas) -> None:
    url = schemas.take()
    fill(url)
    schemas.give_back(url)
    again = schemas.take()
    with tokenquota.open(again, clock=FrozenClock(START), timezone="Asia/Tokyo") as quota:
        assert quota.usage("user:ann").limits == ()
        assert quota.events().total == 0
        assert quota.consume("user:ann", tokens=1).event_id == 1  # as the first event of a store


def test_a_store_still_open_after_its_test_cannot_reach_the_next_one(
    schemas: PostgresSchemas,
) -> None:
    """A replica stopped after the schema's fixture (teardown order) may write once more,
    and a pool reconnects: neither may touch the store of the next test."""
    url = schemas.take()
    late = tokenquota.open(url, clock=FrozenClock(START))
    schemas.give_back(url)
    late.consume("user:ann", tokens=5)  # after the give-back, before the next take
    again = schemas.take()
    assert state(schemas.admin, schema_of(again))["events"] == []
    with pytest.raises(Exception):  # noqa: B017, PT011 - ended, then no such tables: any error
        late.consume("user:ann", tokens=5)
    late.close()
    assert state(schemas.admin, schema_of(again))["events"] == []


def test_a_transaction_left_open_by_a_test_is_ended_and_the_schema_reused(
    schemas: PostgresSchemas,
) -> None:
    url = schemas.take()
    used = oid_of(schemas.admin, url)
    fill(url)
    stuck = sa.create_engine(url)
    conn = stuck.connect()
    conn.execute(sa.text("SELECT * FROM events FOR UPDATE"))  # row locks, never released
    schemas.give_back(url)
    again = schemas.take()
    assert oid_of(schemas.admin, again) == used
    assert state(schemas.admin, schema_of(again))["events"] == []
    with pytest.raises(sa.exc.OperationalError):
        conn.execute(sa.text("SELECT 1"))
    conn.invalidate()
    stuck.dispose()


def test_a_schema_left_in_a_changed_state_is_dropped_not_reused(
    schemas: PostgresSchemas,
) -> None:
    url = schemas.take()
    used = oid_of(schemas.admin, url)
    with schemas.admin.begin() as conn:
        conn.execute(sa.text(f'CREATE TABLE "{schema_of(url)}".stray (a int)'))
    schemas.give_back(url)
    again = schemas.take()
    assert oid_of(schemas.admin, again) != used
    with schemas.admin.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE oid = :o"), {"o": used}
        )
        assert left.scalar() == 0


def test_an_empty_schema_has_no_tables(schemas: PostgresSchemas) -> None:
    url = schemas.empty()
    assert oid_of(schemas.admin, url) is not None
    assert state(schemas.admin, schema_of(url)) == {}
