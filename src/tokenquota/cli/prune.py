"""``tokenquota prune``: remove what no answer needs any more, now (docs/retention.md).

The service does the same in the background every ``prune_interval_seconds``;
this command is for a store no service prunes (the library, a cron job) and
for a first large clean-up, which it runs to the end, batch by batch.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import tokenquota
from tokenquota.cli.common import (
    DEFAULT_DB,
    DEFAULT_TIMEZONE,
    REDIS_ENV,
    Db,
    Redis,
    Timezone,
    reports_errors,
)
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.retention import DEFAULT_BATCH, KINDS, MAX_BATCH
from tokenquota.engine.retention import Report, Retention, horizons


@reports_errors
def prune(
    db: Db = DEFAULT_DB,
    timezone: Timezone = DEFAULT_TIMEZONE,
    redis: Redis = None,
    retention_days: Annotated[
        int,
        typer.Option(
            envvar="TOKENQUOTA_RETENTION_DAYS",
            min=1,
            max=3_660,
            help="How far back a consume may be dated: calendar buckets are kept this long.",
        ),
    ] = 400,
    idempotency_hours: Annotated[
        float,
        typer.Option(
            envvar="TOKENQUOTA_IDEMPOTENCY_HOURS",
            min=24,
            help="Idempotency answers older than this go (at least 24).",
        ),
    ] = 168,
    holds_hours: Annotated[
        float,
        typer.Option(
            envvar="TOKENQUOTA_HOLDS_HOURS",
            min=0,
            help="Reservations and leases that ended longer ago than this go.",
        ),
    ] = 168,
    grace_seconds: Annotated[
        float,
        typer.Option(
            envvar="TOKENQUOTA_PRUNE_GRACE_SECONDS",
            min=0,
            help="Added to every horizon, for replicas whose clocks are behind.",
        ),
    ] = 3_600,
    batch: Annotated[
        int,
        typer.Option(
            envvar="TOKENQUOTA_PRUNE_BATCH",
            min=1,
            max=MAX_BATCH,
            help="Records one batch (one short transaction) removes at most.",
        ),
    ] = DEFAULT_BATCH,
    archive_days: Annotated[
        int | None,
        typer.Option(
            envvar="TOKENQUOTA_LEDGER_ARCHIVE_DAYS",
            min=1,
            help=(
                "Also archive the ledger: export usage events older than this many days "
                "to --archive-dir, then delete them. Off unless given."
            ),
        ),
    ] = None,
    archive_dir: Annotated[
        Path,
        typer.Option(
            envvar="TOKENQUOTA_LEDGER_ARCHIVE_DIR",
            help="Where --archive-days writes the archived events (JSON lines).",
        ),
    ] = Path("tokenquota-archive"),
    only: Annotated[
        list[str] | None,
        typer.Option(help=f"Prune only these kinds ({', '.join(KINDS)}); repeatable."),
    ] = None,
) -> None:
    """Prune old counter buckets, idempotency answers, and ended reservations and leases.

    Only what no answer can read any more goes: usage, limits, history, the
    ledger and idempotent replays within the horizons are unchanged. The
    ledger itself is kept. Runs batch by batch, each its own short transaction,
    so a running service keeps deciding meanwhile.
    """
    kinds = tuple(only or KINDS)
    for kind in kinds:
        if kind not in KINDS:
            raise ValidationError("only", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    redis = redis or os.environ.get(REDIS_ENV) or None
    with tokenquota.open(
        db, redis=redis, timezone=timezone, retention=timedelta(days=retention_days)
    ) as quota:
        retention = Retention(
            quota,
            horizons(
                quota,
                idempotency_hours=idempotency_hours,
                holds_hours=holds_hours,
                grace_seconds=grace_seconds,
            ),
            batch=batch,
        )
        report = Report()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,.0f} removed"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            tasks = {kind: progress.add_task(f"pruning {kind}", total=None) for kind in kinds}
            for kind, removed in retention.batches(kinds):
                report.removed[kind] += removed
                report.batches += 1
                progress.advance(tasks[kind], removed)
            if archive_days is not None:
                task = progress.add_task("archiving the ledger", total=None)
                sink, archived = retention.archive(
                    timedelta(days=archive_days),
                    archive_dir,
                    on_batch=lambda moved: progress.advance(task, moved),
                )
    parts = ", ".join(f"{kind} {report.removed[kind]}" for kind in kinds)
    typer.echo(f"pruned {report.total} records in {report.batches} batches: {parts}")
    if archive_days is not None:
        where = f" to {sink.path}" if archived.total else ""
        typer.echo(f"archived {archived.total} ledger events{where}")
