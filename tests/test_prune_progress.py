"""``tokenquota prune`` shows its progress on stderr, never in what it prints (issue 14 §4).

The other long commands' bars (rebuild, export) are tested in test_cli.py; this
is prune's: a bar per kind while it runs, on a terminal only, and the report
on stdout unchanged by it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

import tokenquota
from tests.conftest import migrated_sqlite
from tokenquota.cli import app
from tokenquota.domain.clock import FrozenClock

ENV = {"COLUMNS": "250", "NO_COLOR": "1", "TOKENQUOTA_DB": None, "TOKENQUOTA_TIMEZONE": None}
# A terminal for rich (FORCE_COLOR makes it draw as if stderr were one), so the bars show.
TERMINAL = {**ENV, "FORCE_COLOR": "1", "NO_COLOR": None, "TTY_COMPATIBLE": "1"}


def test_prune_draws_its_progress_on_stderr_only(sqlite_template: Path, tmp_path: Path) -> None:
    url = migrated_sqlite(sqlite_template, tmp_path / "quota.db")
    # Written 60 days ago by a frozen clock: the command prunes their keys at the real now.
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=60))
    with tokenquota.open(url, clock=clock) as quota:
        for n in range(3):
            quota.consume("user:ann", {"tokens": 10}, idempotency_key=f"k{n}")
    args = ["prune", "--db", url, "--batch", "1", "--only", "idempotency"]
    drawn = CliRunner().invoke(app, args, env=TERMINAL)
    assert drawn.exit_code == 0, drawn.output
    assert "pruning idempotency" in drawn.stderr
    assert "pruning" not in drawn.stdout
    assert "idempotency 3" in drawn.stdout
    quiet = CliRunner().invoke(app, args, env=ENV)  # no terminal: no bar
    assert quiet.exit_code == 0, quiet.output
    assert "pruning" not in quiet.stderr
    assert "idempotency 0" in quiet.stdout
