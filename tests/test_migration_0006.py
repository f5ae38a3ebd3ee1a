"""Migration 0006 counts the lifetime counters of an existing ledger once."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import tokenquota
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.migrate import upgrade

MAX = 2**63 - 1


def test_an_upgraded_store_has_lifetime_counters_and_keeps_the_bound(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0005")
    event = {
        "kind": "consume",
        "ts": 0,
        "recorded_at": 0,
        "mode": "record",
        "model": None,
        "tags": {},
        "idempotency_key": None,
    }
    with engine.begin() as conn:
        conn.execute(
            t.events.insert(),
            [
                {
                    **event,
                    "subject": "user:a",
                    "charged": ["user:a", "org:o"],
                    "amounts": {"tokens": MAX - 5, "requests": 1},
                    "resource": None,
                },
                {
                    **event,
                    "subject": "user:b",
                    "charged": ["user:b", "org:o"],
                    "amounts": {"tokens": 3, "requests": 1},
                    "resource": "deployment:d",
                },
                {
                    **event,
                    "kind": "grant",
                    "subject": "user:b",
                    "charged": ["user:b"],
                    "amounts": {"credits": 10},
                    "resource": None,
                },
            ],
        )
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.counters.c.subject, t.counters.c.metric, t.counters.c.value).where(
                t.counters.c.window == "total"
            )
        ).all()
    engine.dispose()
    assert {(r.subject, r.metric): r.value for r in rows} == {
        ("user:a", "tokens"): MAX - 5,
        ("user:a", "requests"): 1,
        ("org:o", "tokens"): MAX - 2,
        ("org:o", "requests"): 2,
        ("user:b", "tokens"): 3,
        ("user:b", "requests"): 1,
        ("deployment:d~user:b", "tokens"): 3,
        ("deployment:d~user:b", "requests"): 1,
    }
    quota = tokenquota.open(url)
    try:
        assert quota.consume("user:a", tokens=5, requests=0).allowed  # exactly the bound
        assert quota.consume("user:c", tokens=1).allowed  # another series
        with pytest.raises(tokenquota.ValidationError) as caught:
            quota.consume("user:a", tokens=1, requests=0)
        assert caught.value.code == "amount_too_large"
    finally:
        quota.close()
