"""Migration 0007 keeps SQLite's counters and event links in key order, and every row."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.migrate import alembic_config, upgrade


def without_rowid(engine: sa.Engine, table: str) -> bool:
    with engine.connect() as conn:
        sql = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
            {"n": table},
        ).scalar_one()
    return "WITHOUT ROWID" in sql.upper()


def rows(engine: sa.Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        counters = [tuple(r) for r in conn.execute(sa.select(t.counters).order_by(*t.counters.c))]
        links = [
            tuple(r)
            for r in conn.execute(sa.select(t.event_subjects).order_by(*t.event_subjects.c))
        ]
    return counters, links


def test_the_rows_survive_the_rebuild_both_ways(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(
            t.counters.insert(),
            [
                {"subject": s, "metric": "tokens", "window": w, "bucket": b, "value": v}
                for v, (s, w, b) in enumerate(
                    [("user:b", "day", 86_400), ("user:a", "minute", 60), ("org:o", "total", 0)]
                )
            ],
        )
        conn.execute(
            t.event_subjects.insert(),
            [
                {"subject": "user:a", "ts": 5, "event_id": 2},
                {"subject": "org:o", "ts": 5, "event_id": 2},
                {"subject": "user:a", "ts": 1, "event_id": 1},
            ],
        )
    before = rows(engine)
    assert not without_rowid(engine, "counters")

    upgrade(engine)
    assert without_rowid(engine, "counters")
    assert without_rowid(engine, "event_subjects")
    assert rows(engine) == before
    with engine.begin() as conn:  # the primary keys still refuse a duplicate
        conn.execute(
            sa.text(
                "INSERT INTO counters VALUES ('user:a', 'tokens', 'minute', 60, 7)"
                " ON CONFLICT DO UPDATE SET value = counters.value + excluded.value"
            )
        )
    after = rows(engine)
    assert ("user:a", "tokens", "minute", 60, 8) in after[0]
    assert len(after[0]) == len(before[0])

    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert not without_rowid(engine, "counters")
    assert not without_rowid(engine, "event_subjects")
    assert rows(engine) == after
