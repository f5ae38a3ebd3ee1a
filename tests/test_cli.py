"""The command line, end to end: real commands against a real SQLite file.

Every test copies one migrated database instead of migrating its own, which
keeps the suite fast while each test still starts from an empty store.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tokenquota.cli import app

Run = Callable[..., Result]

BASE_ENV: dict[str, str | None] = {
    # Every command reads TOKENQUOTA_* (a config file too): none of the runner's leaks in.
    **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
    "COLUMNS": "250",  # wide enough that table cells never wrap
    "NO_COLOR": "1",
    "TOKENQUOTA_ACTOR": "tester",
    "TOKENQUOTA_TIMEZONE": None,
    "TOKENQUOTA_DB": None,
}


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**BASE_ENV, **(env or {})})


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "quota.db"
    result = invoke("migrate", "--db", f"sqlite:///{path}")
    assert result.exit_code == 0, result.output
    assert "at head" in result.stdout
    return path


@pytest.fixture
def db_url(template_db: Path, tmp_path: Path) -> str:
    path = tmp_path / "quota.db"
    shutil.copyfile(template_db, path)
    return f"sqlite:///{path}"


@pytest.fixture
def cli(db_url: str) -> Run:
    """Run a command against this test's database, named the way users do: TOKENQUOTA_DB."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return invoke(*args, env={"TOKENQUOTA_DB": db_url, **(env or {})})

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def bad_input(result: Result, field: str) -> str:
    """Exit code 2 and one stderr line naming the field; never a traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert field in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def first_cells(table: str) -> list[str]:
    """The first column of each body row of a rich table."""
    return [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]


def usage_rows(run: Run, subject: str, *extra: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(ok(run("usage", subject, "--json", *extra)))[
        "limits"
    ]
    return rows


def row(rows: list[dict[str, object]], subject: str, metric: str) -> dict[str, object]:
    return next(r for r in rows if r["subject"] == subject and r["metric"] == metric)


# the store options ---------------------------------------------------------
def test_help_names_every_command() -> None:
    out = ok(invoke("--help"))
    for command in (
        "subjects",
        "limits",
        "defaults",
        "plans",
        "consume",
        "check",
        "usage",
        "history",
        "events",
        "audit",
        "rebuild",
        "migrate",
    ):
        assert command in out
    assert "-1" in ok(invoke("limits", "set", "--help"))


def test_migrate_creates_the_schema_where_db_says(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    assert "schema is at head" in ok(invoke("migrate", "--db", f"sqlite:///{path}"))
    assert path.exists()
    # Opening a migrated store again is a no-op, not an error.
    ok(invoke("migrate", env={"TOKENQUOTA_DB": f"sqlite:///{path}"}))


def test_db_option_wins_over_the_environment(cli: Run, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    ok(cli("limits", "set", "user:alice", "tokens", "day", "10", "--db", f"sqlite:///{other}"))
    assert usage_rows(cli, "user:alice") == []
    assert len(usage_rows(cli, "user:alice", "--db", f"sqlite:///{other}")) == 1


def test_bad_store_url_and_time_zone_are_bad_input(cli: Run) -> None:
    bad_input(cli("usage", "user:alice", "--db", "postgresql+nope://x"), "db")
    bad_input(cli("usage", "user:alice", "--timezone", "Mars/Base"), "timezone")
    bad_input(cli("usage", "user:alice", env={"TOKENQUOTA_TIMEZONE": "Nowhere"}), "timezone")


def test_times_are_shown_in_the_store_time_zone_which_rebuild_can_move(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "10"))
    assert "UTC" in ok(cli("usage", "user:alice"))
    tokyo = {"TOKENQUOTA_TIMEZONE": "Asia/Tokyo"}
    refused = cli("usage", "user:alice", env=tokyo)
    assert refused.exit_code == 2
    assert "timezone" in refused.stderr
    ok(cli("rebuild", env=tokyo))
    assert "JST" in ok(cli("usage", "user:alice"))


# limits ---------------------------------------------------------------------
def test_limits_set_show_and_unset(cli: Run) -> None:
    out = ok(cli("limits", "set", "user:alice", "tokens", "day", "50000"))
    assert "50,000" in out
    assert "override" in out
    ok(cli("limits", "set", "user:alice", "requests", "minute", "-1"))
    ok(cli("limits", "set", "user:alice", "concurrent_requests", "-", "4"))
    ok(cli("limits", "set", "user:alice", "credits", "month", "20.5", "--shadow"))

    shown = ok(cli("limits", "show", "user:alice"))
    assert "unlimited" in shown
    assert "override (shadow)" in shown
    assert "concurrent_requests" in shown

    rows = usage_rows(cli, "user:alice")
    assert row(rows, "user:alice", "requests")["limit"] == -1
    assert row(rows, "user:alice", "requests")["remaining"] is None
    assert row(rows, "user:alice", "concurrent_requests")["window"] is None
    # Only a shadow rule on credits: an unenforced (source none) entry, then the trial.
    credits = [(r["source"], r["shadow"]) for r in rows if r["metric"] == "credits"]
    assert credits == [("none", False), ("override", True)]

    ok(cli("limits", "unset", "user:alice", "concurrent_requests"))
    ok(cli("limits", "unset", "user:alice", "tokens", "day"))
    metrics = {r["metric"] for r in usage_rows(cli, "user:alice")}
    assert metrics == {"requests", "credits"}


def test_limits_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("limits", "set", "user:alice", "tokens", "fortnight", "5"), "window")
    bad_input(cli("limits", "set", "user:alice", "tokens", "day", "-5"), "limit")
    bad_input(cli("limits", "set", "user:alice", "concurrent_requests", "day", "5"), "window")
    bad_input(cli("limits", "set", "user:alice", "tokenz", "day", "5"), "metric")
    bad_input(cli("limits", "show", "alice"), "subject")
    assert usage_rows(cli, "user:alice") == []  # nothing was changed


# defaults -------------------------------------------------------------------
def test_defaults_apply_by_kind_until_unset(cli: Run) -> None:
    out = ok(cli("defaults", "set", "user", "tokens", "month", "100000"))
    assert "runtime" in out
    assert "100,000" in ok(cli("defaults", "show", "--kind", "user"))
    assert first_cells(ok(cli("defaults", "show", "--kind", "company"))) == []

    assert "default" in ok(cli("limits", "show", "user:bob"))
    assert row(usage_rows(cli, "user:bob"), "user:bob", "tokens")["source"] == "default"
    ok(cli("limits", "set", "user:bob", "tokens", "month", "5"))
    assert row(usage_rows(cli, "user:bob"), "user:bob", "tokens")["source"] == "override"

    ok(cli("defaults", "unset", "user", "tokens", "month"))
    assert usage_rows(cli, "user:carol") == []


def test_defaults_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("defaults", "set", "User", "tokens", "day", "5"), "kind")
    bad_input(cli("defaults", "set", "user", "tokens", "day", "lots"), "limit")


# plans ----------------------------------------------------------------------
def test_plans_lifecycle(cli: Run) -> None:
    out = ok(
        cli(
            "plans",
            "create",
            "Gold",
            "--rule",
            "credits:month:2000",
            "--rule",
            "requests:rolling:1h:100",
            "--rule",
            "concurrent_requests:-:3",
            "--rule",
            "tokens:day:-1:shadow",
        )
    )
    assert "rolling:1h" in out
    listed = ok(cli("plans", "list"))
    assert "Gold" in listed
    assert "credits/month 2,000" in listed
    plan_id = next(line.split("id:")[1].strip() for line in out.splitlines() if "id:" in line)
    assert "Gold" in ok(cli("plans", "show", plan_id))

    ok(cli("plans", "assign", "user:alice", "Gold"))
    rows = usage_rows(cli, "user:alice")
    assert row(rows, "user:alice", "credits")["source"] == "plan"
    assert row(rows, "user:alice", "credits")["limit"] == "2000"
    assert row(rows, "user:alice", "tokens")["limit"] == -1

    line = bad_input(cli("plans", "delete", "Gold"), "Gold")
    assert "conflict" in line
    ok(cli("plans", "unassign", "user:alice"))
    assert usage_rows(cli, "user:alice") == []
    assert "deleted" in ok(cli("plans", "delete", "Gold"))
    bad_input(cli("plans", "show", "Gold"), "plan_id")


def test_plans_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("plans", "create", "Gold", "--rule", "tokens:day"), "rules[0]")
    bad_input(
        cli("plans", "create", "Gold", "--rule", "tokens:day:5", "--rule", "tokens:week:x"),
        "rules[1].limit",
    )
    bad_input(cli("plans", "create", " "), "name")
    bad_input(cli("plans", "assign", "user:alice", "Platinum"), "plan_id")
    assert "Gold" not in ok(cli("plans", "list"))  # a bad rule created nothing


# subjects -------------------------------------------------------------------
def test_subjects_put_show_list_delete(cli: Run) -> None:
    out = ok(
        cli(
            "subjects",
            "put",
            "user:alice",
            "--name",
            "Alice [admin]",
            "--parent",
            "company:acme",
            "--parent",
            "group:research",
            "--metadata",
            '{"team": "ml"}',
        )
    )
    assert "Alice [admin]" in out  # user text is printed as written, not as markup
    shown = ok(cli("subjects", "show", "user:alice"))
    assert "company:acme, group:research" in shown
    assert '"team": "ml"' in shown

    assert first_cells(ok(cli("subjects", "list", "--kind", "user"))) == ["user:alice"]
    assert first_cells(ok(cli("subjects", "list"))) == [
        "company:acme",
        "group:research",
        "user:alice",
    ]
    children = ok(cli("subjects", "list", "--parent", "company:acme"))
    assert "user:alice" in children
    assert "1 of 1" in children

    bad_input(cli("subjects", "delete", "company:acme"), "children")
    ok(cli("subjects", "put", "user:alice", "--no-parents"))
    assert "deleted" in ok(cli("subjects", "delete", "company:acme"))
    bad_input(cli("subjects", "show", "company:acme"), "subject")


def test_subjects_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("subjects", "put", "user:alice", "--metadata", "{bad"), "metadata")
    bad_input(cli("subjects", "put", "user:alice", "--metadata", "[1]"), "metadata")
    bad_input(cli("subjects", "put", "user:bad id"), "subject")
    bad_input(cli("subjects", "list", "--kind", "Users"), "kind")
    ok(cli("subjects", "put", "user:alice", "--parent", "company:acme"))
    bad_input(cli("subjects", "put", "company:acme", "--parent", "user:alice"), "parents")


# consume and check ------------------------------------------------------------
def test_consume_exit_codes_and_blocking_limits(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "100"))
    out = ok(cli("consume", "user:alice", "--tokens", "80", "--model", "gpt-x"))
    assert out.startswith("allowed")

    denied = cli("consume", "user:alice", "--tokens", "30")
    assert denied.exit_code == 1
    assert denied.stdout.startswith("denied")
    assert "blocked by" in denied.stdout
    assert "retry_after: " in denied.stdout
    assert "never" not in denied.stdout

    never = cli("consume", "user:alice", "--tokens", "500", "--json")
    assert never.exit_code == 1
    decision = json.loads(never.stdout)
    assert decision["allowed"] is False
    assert decision["retry_after"] is None
    assert [(b["subject"], b["metric"]) for b in decision["blocked_by"]] == [
        ("user:alice", "tokens")
    ]
    assert row(usage_rows(cli, "user:alice"), "user:alice", "tokens")["used"] == 80


def test_consume_retry_after_is_reported_in_json(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "requests", "day", "1"))
    ok(cli("consume", "user:alice"))
    denied = cli("consume", "user:alice", "--json")
    assert denied.exit_code == 1
    retry_after = json.loads(denied.stdout)["retry_after"]
    assert isinstance(retry_after, int)
    assert 0 < retry_after <= 86_400


def test_consume_charges_ancestors_and_is_all_or_nothing(cli: Run) -> None:
    ok(cli("subjects", "put", "user:alice", "--parent", "company:acme"))
    ok(cli("limits", "set", "company:acme", "tokens", "day", "50"))
    ok(cli("limits", "set", "user:alice", "tokens", "day", "1000"))
    denied = cli("consume", "user:alice", "--input-tokens", "40", "--output-tokens", "20")
    assert denied.exit_code == 1
    assert "company:acme" in denied.stdout.split("blocked by")[1]
    rows = usage_rows(cli, "user:alice", "--ancestors")
    assert row(rows, "user:alice", "tokens")["used"] == 0
    assert row(rows, "company:acme", "tokens")["used"] == 0

    ok(cli("consume", "user:alice", "--input-tokens", "30", "--output-tokens", "10"))
    rows = usage_rows(cli, "user:alice", "--ancestors")
    assert row(rows, "user:alice", "tokens")["used"] == 40
    assert row(rows, "company:acme", "tokens")["used"] == 40


def test_record_mode_idempotency_and_credits(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "credits", "month", "1"))
    ok(cli("consume", "user:alice", "--credits", "0.75", "--idempotency-key", "k1"))
    replay = ok(cli("consume", "user:alice", "--credits", "0.75", "--idempotency-key", "k1"))
    assert "replayed" in replay
    assert cli("consume", "user:alice", "--credits", "0.5").exit_code == 1
    ok(cli("consume", "user:alice", "--credits", "0.5", "--mode", "record"))
    credits = row(usage_rows(cli, "user:alice"), "user:alice", "credits")
    assert credits["used"] == "1.25"
    assert credits["remaining"] in (0, "0")


def test_check_spends_nothing(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "100"))
    assert ok(cli("check", "user:alice", "--tokens", "60")).startswith("would be allowed")
    denied = cli("check", "user:alice", "--tokens", "101")
    assert denied.exit_code == 1
    assert denied.stdout.startswith("would be denied")
    assert json.loads(ok(cli("check", "user:alice", "--tokens", "1", "--json")))["allowed"]
    assert row(usage_rows(cli, "user:alice"), "user:alice", "tokens")["used"] == 0


def test_consume_and_check_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("consume", "user:alice", "--tokens", "-5"), "amounts.tokens")
    bad_input(cli("consume", "user:alice", "--input-tokens", "1.5"), "amounts.input_tokens")
    bad_input(cli("consume", "user:alice", "--credits", "0.0000000001"), "amounts.credits")
    bad_input(cli("consume", "user:alice", "--timestamp", "yesterday"), "timestamp")
    bad_input(cli("consume", "user:alice", "--timestamp", "2026-01-01T00:00:00"), "timestamp")
    bad_input(cli("consume", "user:alice", "--tag", "novalue"), "tags")
    bad_input(cli("check", "user:alice", "--requests", str(2**70)), "amounts.requests")
    bad_input(cli("check", "user:alice", "--credits", "much"), "amounts.credits")
    assert ok(cli("events", "--format", "jsonl")) == ""  # nothing was charged
    # Choices are checked by the parser: still exit code 2, naming the option.
    wrong = cli("consume", "user:alice", "--mode", "bogus")
    assert wrong.exit_code == 2
    assert "--mode" in wrong.stderr


# usage and history ----------------------------------------------------------
def test_usage_table_and_json(cli: Run) -> None:
    assert "has no limits" in ok(cli("usage", "user:alice"))
    ok(cli("limits", "set", "user:alice", "tokens", "day", "1000"))
    ok(cli("consume", "user:alice", "--tokens", "250"))
    table = ok(cli("usage", "user:alice"))
    for column in ("subject", "metric", "window", "limit", "source", "used", "remaining"):
        assert column in table
    assert "reset_at" in table
    assert "750" in table
    data = json.loads(ok(cli("usage", "user:alice", "--json")))
    assert data["subject"] == "user:alice"
    tokens = row(data["limits"], "user:alice", "tokens")
    assert (tokens["used"], tokens["remaining"], tokens["source"]) == (250, 750, "override")
    assert datetime.fromisoformat(str(tokens["reset_at"])) > datetime.now(UTC)
    bad_input(cli("usage", "user"), "subject")


def test_history_counts_back_dated_usage_in_its_own_period(cli: Run) -> None:
    day = (datetime.now(UTC) - timedelta(days=3)).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    ok(
        cli(
            "consume",
            "user:alice",
            "--tokens",
            "7",
            "--model",
            "m1",
            "--timestamp",
            day.isoformat(),
        )
    )
    ok(cli("consume", "user:alice", "--tokens", "5", "--model", "m2"))
    points = json.loads(ok(cli("history", "user:alice", "--json")))
    back = [p for p in points if p["metric"] == "tokens" and p["start"].startswith(str(day.date()))]
    assert [p["value"] for p in back] == [7]
    assert sum(p["value"] for p in points if p["metric"] == "tokens") == 12

    by_model = ok(cli("history", "user:alice", "--group-by", "model", "--granularity", "month"))
    assert "m1" in by_model
    assert "m2" in by_model


def test_history_bad_input_names_the_field(cli: Run) -> None:
    bad_input(
        cli(
            "history",
            "user:alice",
            "--start",
            "2026-03-02T00:00:00Z",
            "--end",
            "2026-03-01T00:00:00Z",
        ),
        "start",
    )
    # A plain date is a bound in the store's zone now (issue 15); a non-date still is not.
    bad_input(cli("history", "user:alice", "--end", "2026-13-01"), "end")
    wrong = cli("history", "user:alice", "--granularity", "week")
    assert wrong.exit_code == 2
    assert "--granularity" in wrong.stderr


# events, audit, rebuild ---------------------------------------------------------
@pytest.fixture
def three_events(cli: Run) -> Run:
    ok(cli("subjects", "put", "user:alice", "--parent", "company:acme"))
    ok(cli("consume", "user:alice", "--input-tokens", "10", "--output-tokens", "5", "--model", "m"))
    ok(cli("consume", "user:alice", "--credits", "0.25", "--tag", "feature=chat"))
    ok(cli("consume", "user:bob", "--tokens", "3", "--idempotency-key", "abc"))
    return cli


def test_events_table_shows_one_page(three_events: Run) -> None:
    out = ok(three_events("events", "--limit", "2"))
    assert "2 of 3 events shown" in out
    out = ok(three_events("events", "--subject", "company:acme"))
    assert "2 of 2 events shown" in out


def test_events_csv_streams_every_event(three_events: Run) -> None:
    out = ok(three_events("events", "--format", "csv", "--limit", "1"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["subject"] for r in rows] == ["user:alice", "user:alice", "user:bob"]
    first, second, third = rows
    assert (first["tokens"], first["input_tokens"], first["output_tokens"]) == ("15", "10", "5")
    assert first["charged"] == "user:alice company:acme"
    assert first["model"] == "m"
    assert second["credits"] == "0.25"
    assert json.loads(second["tags"]) == {"feature": "chat"}
    assert third["idempotency_key"] == "abc"
    assert datetime.fromisoformat(third["timestamp"]).tzinfo is not None


def test_events_jsonl_to_a_file(three_events: Run, tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    result = three_events(
        "events", "--format", "jsonl", "--subject", "user:alice", "--output", str(target)
    )
    assert "wrote 2 events" in ok(result) + result.stderr
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["amounts"] for e in lines] == [
        {"input_tokens": 10, "output_tokens": 5, "tokens": 15, "requests": 1},
        {"credits": "0.25", "requests": 1},
    ]
    assert lines[1]["tags"] == {"feature": "chat"}


def test_events_bad_input_names_the_field(three_events: Run, tmp_path: Path) -> None:
    bad_input(three_events("events", "--output", str(tmp_path / "x.txt")), "output")
    bad_input(three_events("events", "--start", "2026"), "start")
    bad_input(three_events("events", "--subject", "nobody"), "subject")
    bad_input(three_events("events", "--limit", "0"), "limit")
    missing_dir = tmp_path / "no" / "such" / "dir.csv"
    bad_input(three_events("events", "--format", "csv", "--output", str(missing_dir)), "output")


def test_audit_records_who_changed_what(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "10"))
    ok(cli("defaults", "set", "user", "requests", "minute", "5"))
    table = ok(cli("audit"))
    assert "tester" in table
    data = json.loads(ok(cli("audit", "--subject", "user:alice", "--json")))
    assert data["total"] == 1
    (entry,) = data["items"]
    assert (entry["actor"], entry["target"], entry["before"]) == ("tester", "user:alice", None)
    assert entry["after"]["limit"] == 10
    kind = json.loads(ok(cli("audit", "--subject", "defaults/user", "--json")))
    assert kind["total"] == 1
    bad_input(cli("audit", "--limit", "0"), "limit")
    bad_input(cli("audit", "--subject", "no-colon"), "subject")


def test_rebuild_replays_the_ledger(three_events: Run) -> None:
    ok(three_events("limits", "set", "user:alice", "tokens", "day", "100"))
    before = usage_rows(three_events, "user:alice")
    assert "3 events replayed" in ok(three_events("rebuild"))
    assert usage_rows(three_events, "user:alice") == before
    bad_input(three_events("rebuild", "--db", "redis://x"), "db")


# A terminal for rich (FORCE_COLOR makes it draw as if stderr were one), so the bars show.
TERMINAL: dict[str, str | None] = {"FORCE_COLOR": "1", "NO_COLOR": None, "TTY_COMPATIBLE": "1"}


def test_rebuild_and_export_draw_a_progress_bar_on_stderr_only(
    three_events: Run, tmp_path: Path
) -> None:
    rebuilt = three_events("rebuild", env=TERMINAL)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "replaying the ledger" in rebuilt.stderr
    assert "3/3" in rebuilt.stderr
    assert "3 events replayed" in rebuilt.stdout
    assert "replaying" not in rebuilt.stdout

    plain, barred = tmp_path / "plain.csv", tmp_path / "barred.csv"
    quiet = three_events("events", "--format", "csv", "--output", str(plain))
    assert quiet.stderr.strip() == f"wrote 3 events to {plain}"  # no terminal: no bar
    drawn = three_events("events", "--format", "csv", "--output", str(barred), env=TERMINAL)
    assert drawn.exit_code == 0, drawn.output
    assert f"exporting to {barred}" in drawn.stderr
    assert "3/3" in drawn.stderr
    assert drawn.stdout == ""
    assert barred.read_text() == plain.read_text()
    # To stdout the export is the data itself: no bar in it, nor beside it.
    piped = three_events("events", "--format", "jsonl", env=TERMINAL)
    assert "exporting" not in piped.stdout + piped.stderr
    assert len(piped.stdout.splitlines()) == 3


def test_keys_create_quiet_prints_only_the_key(cli: Run) -> None:
    out = ok(cli("keys", "create", "--role", "service", "--quiet"))
    assert re.fullmatch(r"tq_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n", out)
