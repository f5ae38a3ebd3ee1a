"""A two-minute tour of the library on a throwaway SQLite file: ``make demo``."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

import tokenquota
from tokenquota import Usage


def usage_table(usage: Usage) -> Table:
    """Numbers are never cut: their columns are as wide as their widest figure."""
    rows = [
        (
            s.subject,
            f"{s.metric}/{s.window or '-'} ({s.source})",
            "unlimited" if s.limit == -1 else f"{s.limit:,}",
            f"{s.used:,}",
            "-" if s.remaining is None else f"{s.remaining:,}",
            s.reset_at.strftime("%Y-%m-%d %H:%M") if s.reset_at else "-",
        )
        for s in usage.limits
    ]
    table = Table(title=f"usage of {usage.subject} and its ancestors", box=box.SIMPLE_HEAD)
    table.add_column("subject", overflow="fold")
    table.add_column("limit on (source)", overflow="fold")
    for i, name in enumerate(("limit", "used", "remaining", "resets (UTC)"), start=2):
        widest = max([len(name), *(len(row[i]) for row in rows)])
        table.add_column(name, justify="right", no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*row)
    return table


def main() -> None:
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        console.print(f"[bold]tokenquota.open({url!r})[/bold]")
        # One instant for the whole tour, so that usage read before and after the
        # rebuild is compared at the same time: only the counters can differ.
        clock = tokenquota.FrozenClock(datetime.now(UTC))
        with tokenquota.open(url, clock=clock) as q:
            q.set_parents("user:alice", ["company:acme"])
            q.set_limit("company:acme", "tokens", "rolling:30d", 1_000_000)
            q.set_default("user", "tokens", "day", 50_000)
            q.create_plan("Gold", [{"metric": "requests", "window": "minute", "limit": 100}])
            q.assign_plan("user:alice", "Gold")

            first = q.consume("user:alice", tokens=1_200, idempotency_key="req-81")
            again = q.consume("user:alice", tokens=1_200, idempotency_key="req-81")
            console.print(
                f"consume 1200 tokens: allowed={first.allowed}; "
                f"retried with the same key: replayed={again.replayed}, charged once"
            )
            denied = q.consume("user:alice", tokens=49_000)
            blocked = ", ".join(f"{b.subject} {b.metric}/{b.window}" for b in denied.blocked_by)
            console.print(
                f"consume 49000 more tokens: allowed={denied.allowed}, blocked by {blocked}, "
                f"retry after {denied.retry_after} s"
            )
            q.consume(
                "user:alice", input_tokens=300, output_tokens=90, model="llama-70b", mode="record"
            )
            before = q.usage("user:alice", include_ancestors=True)
            console.print(usage_table(before))
            replayed = q.rebuild()
            after = q.usage("user:alice", include_ancestors=True)
            same = after.limits == before.limits
            verdict = "the same usage" if same else "[red]DIFFERENT usage[/red]"
            console.print(f"rebuilt every counter from the ledger ({replayed} events): {verdict}")


if __name__ == "__main__":
    main()
