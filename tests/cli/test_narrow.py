"""At 80 columns every number is printed whole (issue 15).

Rendered through the CLI's own rich console with COLUMNS=80, as a default
terminal would get it: a narrow table may wrap text at spaces, drop empty
columns or turn into one block per row, but never prints ``1,000…``.
"""

from __future__ import annotations

import os
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from tokenquota.cli import app
from tokenquota.cli.common import console
from tokenquota.cli.tables import MAX_LINES, Listing

WIDTH = 80
# Numbers as the CLI prints them: with thousands separators, and exact decimals.
BIG = {
    "company limit": "1,000,000",
    "user limit": "999,200",
    "team limit": "123,456,789",
    "plan limit": "987,654,321",
    "default limit": "50,000",
    "spent": "777,777",
    "left of the company": "222,223",
    "credits": "1234567.890123",
}


def invoke(*args: str, db: str, width: int = WIDTH) -> Result:
    env: dict[str, str | None] = {
        **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
        "COLUMNS": str(width),
        "NO_COLOR": "1",
        "TOKENQUOTA_ACTOR": "operator-with-a-rather-long-login-name",
        "TOKENQUOTA_DB": db,
        "TOKENQUOTA_TIMEZONE": None,
        "TOKENQUOTA_CONFIG": None,
        "TOKENQUOTA_REDIS": None,
    }
    return CliRunner().invoke(app, list(args), env=env)


def ok(result: Result) -> str:
    assert result.exit_code in (0, 1), result.output
    return result.stdout


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('narrow') / 'q.db'}"
    steps = [
        ("subjects", "put", "team:research-and-development", "--parent", "company:acme"),
        ("subjects", "put", "user:alice", "--parent", "team:research-and-development"),
        ("limits", "set", "company:acme", "tokens", "month", "1000000"),
        ("limits", "set", "team:research-and-development", "tokens", "year", "123456789"),
        ("limits", "set", "user:alice", "tokens", "day", "999200"),
        ("defaults", "set", "user", "input_tokens", "day", "50000"),
        ("plans", "create", "Enterprise Gold", "--rule", "output_tokens:rolling:30d:987654321"),
        ("grants", "add", "user:alice", "1234567.890123"),
        ("consume", "user:alice", "--tokens", "777777", "--model", "a-long-model-name-2024-07-18"),
        ("keys", "create", "--role", "service", "--name", "the nightly batch job of acme"),
    ]
    for step in steps:
        ok(invoke(*step, db=url))
    return url


COMMANDS = [
    ("usage", "user:alice", "--ancestors"),
    ("check", "user:alice", "--tokens", "1000000"),  # denied: the blocked-by table
    ("limits", "show", "user:alice"),
    ("defaults", "show"),
    ("plans", "list"),
    ("grants", "list", "user:alice"),
    ("history", "user:alice"),
    ("top",),
    ("top", "--parent", "company:acme", "--window", "total"),
    ("events",),
    ("audit",),
    ("keys", "list"),
    ("subjects", "list"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_number_is_whole_and_no_line_is_wider_than_the_terminal(
    db: str, command: tuple[str, ...]
) -> None:
    out = ok(invoke(*command, db=db))
    assert "…" not in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= WIDTH, out
    # The very numbers a terminal wide enough for any table shows, none cut or split.
    wide = ok(invoke(*command, db=db, width=250))
    assert numbers(out) == numbers(wide), out


def numbers(text: str) -> list[str]:
    # retry_after counts down in seconds between the two runs; everything else is stored.
    kept = "\n".join(line for line in text.splitlines() if not line.startswith("retry_after"))
    return sorted(re.findall(r"\d[\d,.]*", kept))


def test_the_numbers_that_used_to_be_cut_are_there(db: str) -> None:
    usage = ok(invoke("usage", "user:alice", "--ancestors", db=db))
    for name in ("company limit", "user limit", "team limit", "spent", "left of the company"):
        assert BIG[name] in usage, (name, usage)
    assert BIG["plan limit"] in ok(invoke("plans", "list", db=db))
    assert BIG["default limit"] in ok(invoke("defaults", "show", db=db))
    assert "1,234,567.890123" in ok(invoke("grants", "list", "user:alice", db=db))
    assert "tokens=777777" in ok(invoke("events", db=db))
    history = ok(invoke("history", "user:alice", db=db))
    assert BIG["spent"] in history


def test_the_audit_log_keeps_each_entry_short(db: str) -> None:
    out = ok(invoke("audit", db=db))
    entries = len(re.findall(r"^id\s+\d+\s*$", out, flags=re.MULTILINE)) or out.count("│ ")
    assert entries >= 8, out
    # Each entry is one block: about a line per field, a JSON value over a few at most.
    assert len(out.splitlines()) <= entries * 12, out


def test_the_cli_console_takes_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    assert console().width == WIDTH


def render(listing: Listing, width: int) -> str:
    out = Console(width=width, markup=False, highlight=False, emoji=False, no_color=True)
    with out.capture() as captured:
        out.print(listing)
    return captured.get()


def numbers_listing() -> Listing:
    listing = Listing("t")
    for name in ("subject", "limit", "used", "note", "empty"):
        listing.add_column(name, justify="left" if name in ("subject", "note") else "right")
    listing.add_row("company:acme", "1,000,000", "999,200", "one two three four five six", "")
    listing.add_row("user:alice", "123,456,789", "0", "x", "-")
    return listing


def test_a_wide_terminal_gets_one_table() -> None:
    out = render(numbers_listing(), 200)
    assert "┃ subject" in out
    assert "empty" in out
    assert "1,000,000" in out


def test_a_narrower_one_wraps_text_at_spaces_then_drops_empty_columns() -> None:
    wrapped = render(numbers_listing(), 66)
    assert "┃ subject" in wrapped
    assert "one two three four five six" not in wrapped  # wrapped, at spaces
    assert "1,000,000" in wrapped
    assert "123,456,789" in wrapped
    dropped = render(numbers_listing(), 58)
    assert "┃ subject" in dropped
    assert "empty" not in dropped
    assert "123,456,789" in dropped


def test_a_terminal_too_narrow_for_any_table_gets_blocks() -> None:
    out = render(numbers_listing(), 30)
    assert "┃" not in out
    assert re.search(r"^limit\s+1,000,000", out, flags=re.MULTILINE), out
    assert re.search(r"^limit\s+123,456,789", out, flags=re.MULTILINE), out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 30


def test_no_cell_wraps_over_max_lines_in_a_table() -> None:
    listing = Listing()
    listing.add_column("json")
    listing.add_row(" ".join(["word"] * 40))  # 199 characters
    out = render(listing, 60)
    # 199 / MAX_LINES needs 67 columns: too wide for 60, so a block, not 4+ lines in a cell.
    assert "┃" not in out
    assert MAX_LINES == 3
