"""``tokenquota prune`` end to end, and the retention settings the service reads."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tokenquota
from tests.conftest import migrated_sqlite
from tokenquota.cli import app
from tokenquota.domain.clock import FrozenClock
from tokenquota.settings import Settings

ENV = {"COLUMNS": "250", "NO_COLOR": "1", "TOKENQUOTA_DB": None, "TOKENQUOTA_TIMEZONE": None}


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_prune_command_removes_old_records_and_changes_no_answer(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "quota.db"
    url = migrated_sqlite(sqlite_template, path)
    # Written 60 days ago by a frozen clock; the command prunes at the real now.
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=60))
    with tokenquota.open(url, clock=clock) as quota:
        quota.set_limits(
            "user:ann",
            [
                {"metric": "tokens", "window": "rolling:1h", "limit": 1_000},
                {"metric": "tokens", "window": "month", "limit": 1_000},
            ],
        )
        for n in range(5):
            quota.consume("user:ann", {"tokens": 10}, idempotency_key=f"k{n}")
            clock.advance(timedelta(minutes=20))
        quota.reserve("user:ann", {"tokens": 1}, ttl=60)
        quota.acquire("user:ann", ttl=60)
    counters_before = rows(path, "counters")
    with tokenquota.open(url) as quota:
        usage_before = quota.usage("user:ann")
        history_before = quota.history("user:ann", granularity="hour")

    result = CliRunner().invoke(app, ["prune", "--db", url, "--batch", "2"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "pruned" in result.stdout
    assert "idempotency 5" in result.stdout
    assert "reservations 1" in result.stdout
    assert "leases 1" in result.stdout
    assert rows(path, "idempotency") == 0
    assert rows(path, "reservations") == 0
    assert rows(path, "leases") == 0
    # The rolling buckets are gone; month buckets stay (a consume may be back-dated 400 days).
    assert 0 < rows(path, "counters") < counters_before
    assert rows(path, "events") == 5  # the ledger is kept
    with tokenquota.open(url) as quota:
        assert quota.history("user:ann", granularity="hour") == history_before
        after = quota.usage("user:ann")
        assert [(s.used, s.remaining) for s in after.limits] == [
            (s.used, s.remaining) for s in usage_before.limits
        ]
        quota.rebuild()
        assert [(s.used, s.remaining) for s in quota.usage("user:ann").limits] == [
            (s.used, s.remaining) for s in usage_before.limits
        ]


def test_prune_command_refuses_an_unknown_kind_and_a_short_key_horizon(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    bad = CliRunner().invoke(app, ["prune", "--db", url, "--only", "ledger"], env=ENV)
    assert bad.exit_code == 2
    assert "unknown kind" in bad.output
    short = CliRunner().invoke(app, ["prune", "--db", url, "--idempotency-hours", "2"], env=ENV)
    assert short.exit_code == 2


def test_the_service_reads_retention_days_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "tokenquota.toml"
    config.write_text("retention_days = 30\nidempotency_hours = 48\nprune_interval_seconds = 0\n")
    settings = Settings.load(config)
    assert settings.retention_days == 30
    assert settings.idempotency_hours == 48
    assert settings.pruning()["interval"] == 0


def test_the_service_refuses_idempotency_hours_under_24(tmp_path: Path) -> None:
    config = tmp_path / "tokenquota.toml"
    config.write_text("idempotency_hours = 12\n")
    with pytest.raises(ValueError, match="idempotency_hours"):
        Settings.load(config)


def test_prune_command_archives_the_ledger_when_asked(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "quota.db"
    url = migrated_sqlite(sqlite_template, path)
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=90))
    with tokenquota.open(url, clock=clock) as quota:
        quota.set_limits("user:ann", [{"metric": "tokens", "window": "total", "limit": 1_000}])
        for _ in range(5):
            quota.consume("user:ann", {"tokens": 10})
    with tokenquota.open(url) as quota:
        usage_before = [(s.used, s.remaining) for s in quota.usage("user:ann").limits]
    archive = tmp_path / "archive"
    args = ["prune", "--db", url, "--retention-days", "20", "--archive-days", "30"]
    result = CliRunner().invoke(app, [*args, "--archive-dir", str(archive)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "archived 5 ledger events to" in result.stdout
    [written] = archive.iterdir()
    assert len(written.read_text().splitlines()) == 5
    assert rows(path, "events") == 1  # the carry that holds their sum
    with tokenquota.open(url) as quota:
        assert [(s.used, s.remaining) for s in quota.usage("user:ann").limits] == usage_before
        quota.rebuild()
        assert [(s.used, s.remaining) for s in quota.usage("user:ann").limits] == usage_before
