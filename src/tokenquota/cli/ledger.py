"""The ledger and the audit log: export, inspect, rebuild counters, migrate."""

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tokenquota import Event, ValidationError
from tokenquota.cli.common import (
    READ_TIME_HELP,
    Config,
    Db,
    Redis,
    Timezone,
    amounts_text,
    console,
    opened,
    page_note,
    print_json,
    read_time_arg,
    reports_errors,
    time_arg,
    when,
)
from tokenquota.cli.tables import Listing
from tokenquota.export import csv_chunks, jsonl_chunks
from tokenquota.wire.ledger import encode_audit_entry
from tokenquota.wire.metrics import encode_amounts


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSONL = "jsonl"


Offset = Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many (table only).")]
Limit = Annotated[
    int, typer.Option("--limit", metavar="N", help="Show at most this many (table only).")
]


def progress_bar() -> Progress:
    """A bar on stderr that leaves nothing behind (``transient``), as ``prune`` has.

    On stderr, so the data written to stdout or a file is never mixed with it;
    rich draws nothing when stderr is not a terminal.
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@contextmanager
def _sink(output: Path | None) -> Iterator[TextIO]:
    if output is None:
        yield sys.stdout
        return
    try:
        stream = output.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ValidationError("output", f"cannot write {str(output)!r}: {exc.strerror}") from None
    with stream:
        yield stream


@reports_errors
def events(
    subject: Annotated[
        str | None,
        typer.Option("--subject", metavar="SUBJECT", help="Only events charged to this subject."),
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", metavar="DATE", help=READ_TIME_HELP)
    ] = None,
    end: Annotated[
        str | None, typer.Option("--end", metavar="DATE", help="Exclusive. " + READ_TIME_HELP)
    ] = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="table shows one page; csv and jsonl stream every matching event.",
        ),
    ] = Format.TABLE,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", metavar="FILE", help="Write csv or jsonl to this file instead of stdout."
        ),
    ] = None,
    offset: Offset = 0,
    limit: Limit = 50,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """The usage ledger, the source of truth counters are rebuilt from."""
    time_arg(start, "start")  # a malformed time is refused before the store is opened
    time_arg(end, "end")
    if fmt is Format.TABLE and output is not None:
        raise ValidationError("output", "needs --format csv or jsonl")
    with opened(db, timezone, config) as quota:
        begin = read_time_arg(start, "start", quota.tz)
        stop = read_time_arg(end, "end", quota.tz)
        if fmt is Format.TABLE:
            page = quota.events(subject=subject, start=begin, end=stop, offset=offset, limit=limit)
            table = Listing("events")
            for column in ("id", "timestamp", "subject", "mode", "amounts", "model", "charged"):
                table.add_column(
                    column,
                    justify="right" if column == "id" else "left",
                    no_wrap=column in ("id", "timestamp"),
                )
            for e in page.items:
                table.add_row(
                    str(e.id),
                    when(e.timestamp, quota.tz),
                    str(e.subject),
                    e.mode.value,
                    amounts_text(encode_amounts(e.amounts)),
                    e.model or "",
                    ", ".join(map(str, e.charged[1:])),
                )
            out = console()
            out.print(table)
            out.print(page_note(len(page.items), page.total, page.offset, "events"))
            return
        # Stream: an export may be far larger than memory, so never build a list.
        stream = quota.iter_events(subject=subject, start=begin, end=stop)
        written = 0

        def counted() -> Iterator[Event]:
            nonlocal written
            for event in stream:
                written += 1
                yield event

        chunks = csv_chunks if fmt is Format.CSV else jsonl_chunks
        try:
            if output is None:  # to stdout, where a reader takes it: no bar
                with _sink(output) as sink:
                    for chunk in chunks(counted()):
                        sink.write(chunk)
            else:
                # The total is one count of the same range; events added meanwhile may
                # carry the bar past it, which only a progress bar can be wrong about.
                total = quota.events(subject=subject, start=begin, end=stop, limit=1).total
                with _sink(output) as sink, progress_bar() as bar:
                    task = bar.add_task(f"exporting to {output}", total=total)
                    for chunk in chunks(counted()):
                        sink.write(chunk)
                        bar.update(task, completed=written)
        except BrokenPipeError:
            # The reader (say `| head`) has stopped; that is its choice, not an error.
            # Point stdout at /dev/null so the interpreter's final flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        if output is not None:
            typer.echo(f"wrote {written} events to {output}", err=True)


@reports_errors
def audit(
    subject: Annotated[
        str | None,
        typer.Option(
            "--subject",
            metavar="SUBJECT",
            help="A subject, or defaults/<kind>, plans/<id>, keys/<id> or webhooks/<id>.",
        ),
    ] = None,
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Who changed which limit, default or plan, when, from what to what."""
    with opened(db, timezone, config) as quota:
        page = quota.audit(subject=subject, offset=offset, limit=limit)
        if as_json:
            print_json({"total": page.total, "items": [encode_audit_entry(a) for a in page.items]})
            return
        table = Listing("audit log")
        for column in ("id", "at", "actor", "action", "target", "before", "after"):
            table.add_column(
                column,
                justify="right" if column == "id" else "left",
                no_wrap=column in ("id", "at"),
            )
        for a in page.items:
            table.add_row(
                str(a.id),
                when(a.at, quota.tz),
                a.actor,
                a.action,
                a.target,
                json.dumps(a.before, sort_keys=True, default=str),
                json.dumps(a.after, sort_keys=True, default=str),
            )
        out = console()
        out.print(table)
        out.print(page_note(len(page.items), page.total, page.offset, "entries"))


@reports_errors
def rebuild(
    db: Db = None, timezone: Timezone = None, config: Config = None, redis: Redis = None
) -> None:
    """Recompute every counter from the ledger (after restoring a backup of the events).

    With --timezone naming a zone other than the store's, this is also how a
    store moves to that zone: every calendar counter is recomputed in it. With
    --redis, it restores Redis (after it lost its data) from the ledger in --db.
    """
    with (
        opened(db, timezone, config, move_timezone=True, redis=redis) as quota,
        progress_bar() as bar,
    ):
        task = bar.add_task("replaying the ledger", total=None)
        replayed = quota.rebuild(
            on_progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    typer.echo(f"rebuilt the counters from the ledger: {replayed} events replayed")


@reports_errors
def migrate(db: Db = None, timezone: Timezone = None, config: Config = None) -> None:
    """Bring the database schema to the latest version (opening the store does it)."""
    with opened(db, timezone, config):
        pass
    typer.echo("the database schema is at head")
