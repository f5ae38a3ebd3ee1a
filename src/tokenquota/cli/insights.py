"""``tokenquota top``: who spends most, as /v1/insights/top-consumers and the dashboard rank it."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from tokenquota.cli.common import (
    METRIC_HELP,
    READ_TIME_HELP,
    SUBJECT_HELP,
    Config,
    Db,
    Timezone,
    console,
    number,
    opened,
    print_json,
    read_time_arg,
    reports_errors,
    time_arg,
    when,
)
from tokenquota.cli.metering import AsJson
from tokenquota.cli.tables import Listing
from tokenquota.domain.insights import DEFAULT_TOP, MAX_TOP, TopConsumers
from tokenquota.wire.insights import encode_top_consumers


@reports_errors
def top(
    metric: Annotated[
        str,
        typer.Option("--metric", metavar="METRIC", help="What to rank by: " + METRIC_HELP),
    ] = "tokens",
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            metavar="WINDOW",
            show_default=False,
            help=(
                "Rank the current period of this window: minute, hour, day, week, month, "
                "year, total or rolling:<N>m|h|d (default month, unless --start/--end)."
            ),
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            metavar="DATE",
            show_default=False,
            help="Rank this range instead of a window. " + READ_TIME_HELP,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--end", metavar="DATE", show_default=False, help=READ_TIME_HELP),
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--parent",
            metavar="SUBJECT",
            show_default=False,
            help="Rank only its direct children, by what they spent in it. " + SUBJECT_HELP,
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="KIND",
            show_default=False,
            help="Rank only subjects of this kind (user, team, company, ...).",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", metavar="N", help=f"How many to show, 1 to {MAX_TOP}."),
    ] = DEFAULT_TOP,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """The subjects that used most of a metric in a window's current period or a range."""
    time_arg(start, "start")  # a malformed time is refused before the store is opened
    time_arg(end, "end")
    with opened(db, timezone, config) as quota:
        ranked = quota.top_consumers(
            metric,
            window=window,
            start=read_time_arg(start, "start", quota.tz),
            end=read_time_arg(end, "end", quota.tz),
            parent=parent,
            kind=kind,
            limit=limit,
        )
        if as_json:
            print_json(encode_top_consumers(ranked))
            return
        span = _span(ranked, quota.tz)
        scope = f" under {ranked.parent}" if ranked.parent else ""
        # The range on its own line: a title as long would wrap over the narrow table.
        out = console()
        out.print(f"top {ranked.metric} consumers{scope}: {span}")
        table = Listing()
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("subject")
        table.add_column(ranked.metric, justify="right", no_wrap=True)
        table.add_column("events", justify="right", no_wrap=True)
        for rank, consumer in enumerate(ranked.consumers, start=1):
            table.add_row(
                str(rank), consumer.subject, number(consumer.value), number(consumer.events)
            )
        if ranked.consumers:
            out.print(table)
        else:
            out.print(f"no {ranked.metric} used{scope} in that range")


def _span(ranked: TopConsumers, tz: ZoneInfo) -> str:
    """The range ranked, in the store's zone: a window's current period or the bounds given."""
    start, end = ranked.start, ranked.end
    if start is not None and end is not None:
        text = f"{when(start, tz)} to {when(end, tz)}"
    elif start is not None:
        text = f"since {when(start, tz)}"
    elif end is not None:
        text = f"before {when(end, tz)}"
    else:
        text = "all time"
    return f"{ranked.window}, {text}" if ranked.window and ranked.window != "total" else text
