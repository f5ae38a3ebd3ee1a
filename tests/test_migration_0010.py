"""Migration 0010 turns the tracked pairs into wildcard rows: an upgraded store counts
exactly what it counted, and a downgrade gives back one row per pair."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

import tokenquota
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.tracking import WILDCARD
from tokenquota.storage.sql.migrate import alembic_config, upgrade
from tokenquota.storage.sql.store import SqlStore

OLD = sa.table("tracked", sa.column("metric"), sa.column("window"))
PAIRS = [("tokens", "day"), ("requests", "minute"), ("tokens", "rolling:7d")]  # 0006: "total"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    found: str = request.getfixturevalue("empty_postgres_url")
    return found


def test_old_pairs_become_wildcard_rows_and_come_back(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        upgraded_and_back(engine, url)
    finally:
        engine.dispose()


def upgraded_and_back(engine: sa.Engine, url: str) -> None:
    upgrade(engine, "0009")
    with engine.begin() as conn:
        conn.execute(OLD.insert(), [{"metric": m, "window": w} for m, w in PAIRS])

    upgrade(engine)
    with engine.connect() as conn:
        found = conn.execute(sa.text('SELECT kind, metric, "window" FROM tracked'))
        rows = {(r.kind, r.metric, r.window) for r in found}
    assert {(m, w) for m, w in PAIRS} <= {(m, w) for _, m, w in rows}
    assert {k for k, _, _ in rows} == {WILDCARD}  # every old pair still store-wide
    with engine.begin() as conn:  # the new key: one pair for two kinds
        new = sa.table("tracked", sa.column("kind"), sa.column("metric"), sa.column("window"))
        conn.execute(
            new.insert(),
            [{"kind": k, "metric": "tokens", "window": "hour"} for k in ("user", "org")],
        )

    store = tokenquota.open(url).store
    try:
        assert isinstance(store, SqlStore)
        tracked = store.catalog.config().tracked()
        day = LimitKey.from_storage("tokens", "day")
        hour = LimitKey.from_storage("tokens", "hour")
        for series in ("user:a", "org:o", "deployment:d~user:a"):
            assert day in tracked.of_series(series)
        assert hour in tracked.of_series("user:a")
        assert hour not in tracked.of_series("team:t")
    finally:
        store.close()

    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")
    with engine.connect() as conn:
        back = [(r.metric, r.window) for r in conn.execute(sa.select(OLD))]
    assert len(back) == len(set(back))  # one row per pair, the two kinds' hour folded
    assert set(PAIRS) | {("tokens", "hour")} <= set(back)
