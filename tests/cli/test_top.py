"""``tokenquota top``: the ranking of /v1/insights/top-consumers, from the command line."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from typer.testing import CliRunner, Result

from tokenquota import open as open_quota
from tokenquota.cli import app
from tokenquota.wire.insights import encode_top_consumers


def invoke(*args: str, db: str) -> Result:
    env: dict[str, str | None] = {
        **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
        "COLUMNS": "250",
        "NO_COLOR": "1",
        "TOKENQUOTA_ACTOR": "tester",
        "TOKENQUOTA_DB": db,
    }
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """company:acme > team:a > user:a1, company:acme > user:a2, user:solo; usage this month."""
    url = f"sqlite:///{tmp_path_factory.mktemp('top') / 'q.db'}"
    with open_quota(url) as quota:
        quota.put_subject("company:acme")
        quota.put_subject("team:a", parents=["company:acme"])
        quota.put_subject("user:a1", parents=["team:a"])
        quota.put_subject("user:a2", parents=["company:acme"])
        quota.consume("user:a1", tokens=1_500_000)
        quota.consume("user:a1", tokens=10)
        quota.consume("user:a2", tokens=25_000)
        quota.consume("user:solo", tokens=900_000)
        # Two months ago: outside this month, inside all time.
        old = quota.clock.now() - timedelta(days=60)
        quota.consume("user:a2", tokens=9_000_000, mode="record", timestamp=old)
    return url


def rows(out: str) -> list[tuple[str, str]]:
    """(subject, value) of each body row of the table."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    return [(c[1], c[2]) for c in cells if len(c) == 4 and c[0].isdigit()]


def test_top_ranks_this_month_by_tokens_with_whole_numbers(db: str) -> None:
    result = invoke("top", db=db)
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == [
        ("company:acme", "1,525,010"),
        ("team:a", "1,500,010"),
        ("user:a1", "1,500,010"),
        ("user:solo", "900,000"),
        ("user:a2", "25,000"),
    ]
    assert "top tokens consumers: month, " in result.stdout


def test_parent_kind_limit_and_window_narrow_the_ranking(db: str) -> None:
    children = invoke("top", "--metric", "tokens", "--parent", "company:acme", db=db)
    assert rows(children.stdout) == [("team:a", "1,500,010"), ("user:a2", "25,000")]
    assert "under company:acme" in children.stdout
    users = invoke("top", "--kind", "user", "--limit", "2", db=db)
    assert rows(users.stdout) == [("user:a1", "1,500,010"), ("user:solo", "900,000")]
    ever = invoke("top", "--window", "total", "--kind", "user", "--limit", "1", db=db)
    assert rows(ever.stdout) == [("user:a2", "9,025,000")]
    assert "all time" in ever.stdout
    requests = invoke("top", "--metric", "requests", "--kind", "user", db=db)
    # Every consume counts a request unless told otherwise; ties go by subject.
    assert rows(requests.stdout) == [("user:a1", "2"), ("user:a2", "1"), ("user:solo", "1")]


def test_json_is_what_the_api_answers(db: str) -> None:
    result = invoke("top", "--parent", "company:acme", "--json", db=db)
    assert result.exit_code == 0, result.output
    with open_quota(db) as quota:
        expected = encode_top_consumers(quota.top_consumers("tokens", parent="company:acme"))
    assert json.loads(result.stdout) == expected


def test_nothing_used_says_so(db: str) -> None:
    result = invoke("top", "--metric", "credits", db=db)
    assert result.exit_code == 0, result.output
    assert "no credits used" in result.stdout


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--metric", "concurrent_requests"), "metric"),
        (("--metric", "bananas"), "metric"),
        (("--limit", "0"), "limit"),
        (("--window", "fortnight"), "window"),
        (("--window", "day", "--start", "2026-01-01"), "window"),
        (("--start", "yesterday"), "start"),
        (("--parent", "acme"), "parent"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db: str, args: tuple[str, ...], field: str) -> None:
    result = invoke("top", *args, db=db)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    assert field in line, line
