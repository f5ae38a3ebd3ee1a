"""Help that tells the truth, flags shown as flags, --version, dates in the store's zone."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, time, timedelta
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner, Result

from tokenquota.cli import app

ENV: dict[str, str | None] = {
    **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
    "COLUMNS": "100",
    "NO_COLOR": "1",
    "TOKENQUOTA_ACTOR": "tester",
    "TOKENQUOTA_DB": None,
    "TOKENQUOTA_TIMEZONE": None,
    "TOKENQUOTA_CONFIG": None,
    "TOKENQUOTA_REDIS": None,
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=ENV)


def help_of(*command: str) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_version_comes_from_the_installed_metadata() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tokenquota {version('tokenquota')}"


def test_shell_completion_is_offered() -> None:
    assert "--install-completion" in help_of()
    assert "--show-completion" in help_of()


COMMANDS = [
    ("usage",),
    ("consume",),
    ("history",),
    ("events",),
    ("audit",),
    ("subjects", "put"),
    ("subjects", "list"),
    ("keys", "create"),
    ("serve",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_flags_read_as_flags_and_values_have_names(command: tuple[str, ...]) -> None:
    text = help_of(*command)
    assert "<bool>" not in text
    assert "<list[" not in text
    # Every option that takes a value names it (URL, N, SUBJECT), not a Python type.
    assert not re.search(r"^\s+--[\w-]+ <(str|int|path)>", text, flags=re.MULTILINE), text


def test_the_helps_the_issue_named() -> None:
    assert "--ancestors / --no-ancestors" in help_of("usage")
    assert "--parent SUBJECT" in help_of("subjects", "put")
    assert "postgresql://" in help_of("usage")
    assert "postgresql://" in help_of("serve")
    serve_zone = " ".join(help_of("serve").split())
    assert "keeps its own" not in serve_zone
    assert "refused" in serve_zone
    assert "rebuild --timezone" in serve_zone
    subjects = help_of("subjects")
    plans = help_of("plans")
    for group, name in ((subjects, "show"), (subjects, "list"), (plans, "list"), (plans, "show")):
        line = next(line for line in group.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split()) > 1, f"{name} has no help: {group}"


def test_history_takes_plain_dates_in_the_store_zone(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'q.db'}"
    zone = ("--db", db, "--timezone", "Asia/Tokyo")
    tokyo = ZoneInfo("Asia/Tokyo")
    day = (datetime.now(tokyo) - timedelta(days=3)).date()
    # 00:30 in Tokyo is still the day before in UTC: the day is the store's, not UTC's.
    at = datetime.combine(day, time(0, 30), tokyo).isoformat()
    consumed = invoke("consume", "user:alice", "--tokens", "7", "--timestamp", at, *zone)
    assert consumed.exit_code == 0, consumed.output
    after = day + timedelta(days=1)
    for start, end in ((f"{day}", f"{after}"), (f"{day}T00:00", f"{after}T00:00")):
        result = invoke("history", "user:alice", "--start", start, "--end", end, "--json", *zone)
        assert result.exit_code == 0, result.output
        points = json.loads(result.stdout)
        tokens = [p for p in points if p["metric"] == "tokens"]
        assert [p["value"] for p in tokens] == [7], points
        assert datetime.fromisoformat(tokens[0]["start"]) == datetime.combine(day, time(), tokyo)
    earlier = invoke("history", "user:alice", "--end", f"{day}", "--json", *zone)
    assert earlier.exit_code == 0, earlier.output
    assert [p for p in json.loads(earlier.stdout) if p["metric"] == "tokens"] == []
