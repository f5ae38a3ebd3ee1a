"""``tokenquota prune``: remove what no answer needs any more, now (docs/retention.md).

The service does the same in the background every ``prune_interval_seconds``;
this command is for a store no service prunes (the library, a cron job) and
for a first large clean-up, which it runs to the end, batch by batch.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tokenquota.cli.common import (
    Config,
    Db,
    Redis,
    Timezone,
    load_settings,
    opened,
    reports_errors,
)
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.retention import DEFAULT_BATCH, KINDS, MAX_BATCH
from tokenquota.engine.retention import Report, Retention, horizons


@reports_errors
def prune(
    db: Db = None,
    timezone: Timezone = None,
    redis: Redis = None,
    config: Config = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=3_660,
            show_default=False,
            help=(
                "How far back a consume may be dated: calendar buckets are kept this long "
                "(else TOKENQUOTA_RETENTION_DAYS, else the config file, else 400)."
            ),
        ),
    ] = None,
    idempotency_hours: Annotated[
        float | None,
        typer.Option(
            min=24,
            show_default=False,
            help="Idempotency answers older than this go (at least 24; default 168).",
        ),
    ] = None,
    holds_hours: Annotated[
        float | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Reservations and leases that ended longer ago than this go (default 168).",
        ),
    ] = None,
    grace_seconds: Annotated[
        float | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Added to every horizon, for replicas whose clocks are behind (default 3600).",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_BATCH,
            show_default=False,
            help=f"Records one batch (one short transaction) removes at most "
            f"(default {DEFAULT_BATCH}).",
        ),
    ] = None,
    archive_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help=(
                "Also archive the ledger: export usage events older than this many days "
                "to --archive-dir, then delete them. Off unless given here or as "
                "ledger_archive_days in the settings."
            ),
        ),
    ] = None,
    archive_dir: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            help="Where --archive-days writes the archived events (default tokenquota-archive).",
        ),
    ] = None,
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
    # The same settings, in the same order, as serve's background pruning.
    settings = load_settings(
        config,
        db=db,
        timezone=timezone,
        redis=redis,
        retention_days=retention_days,
        idempotency_hours=idempotency_hours,
        holds_hours=holds_hours,
        prune_grace_seconds=grace_seconds,
        prune_batch=batch,
        ledger_archive_days=archive_days,
        ledger_archive_dir=str(archive_dir) if archive_dir is not None else None,
    )
    archive_days = settings.ledger_archive_days
    with opened(db, timezone, config, redis=redis, settings=settings) as quota:
        retention = Retention(
            quota,
            horizons(
                quota,
                idempotency_hours=settings.idempotency_hours,
                holds_hours=settings.holds_hours,
                grace_seconds=settings.prune_grace_seconds,
            ),
            batch=settings.prune_batch,
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
                    Path(settings.ledger_archive_dir),
                    on_batch=lambda moved: progress.advance(task, moved),
                )
    parts = ", ".join(f"{kind} {report.removed[kind]}" for kind in kinds)
    typer.echo(f"pruned {report.total} records in {report.batches} batches: {parts}")
    if archive_days is not None:
        where = f" to {sink.path}" if archived.total else ""
        typer.echo(f"archived {archived.total} ledger events{where}")
