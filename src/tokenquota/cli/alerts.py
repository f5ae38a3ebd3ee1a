"""``tokenquota alerts SUBJECT``: a subject's alert events, as ``GET /v1/subjects/{ref}/alerts``.

Read from the store as ``serve`` opens it, like ``webhooks deliveries``: alerts
are recorded by the decisions themselves, with or without a webhook key or
any endpoint, so this needs neither. Each event comes with every delivery of
it (the CLI is the operator's view, as an admin key's).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer

from tokenquota.cli.common import (
    SUBJECT_HELP,
    Config,
    Db,
    Timezone,
    console,
    number,
    opened,
    page_note,
    print_json,
    reports_errors,
    when,
)
from tokenquota.cli.tables import Listing
from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.errors import Conflict
from tokenquota.domain.metrics import Metric, from_units
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Page
from tokenquota.domain.webhooks import Delivery
from tokenquota.engine.webhooks import open_webhooks
from tokenquota.wire.views import encode_page
from tokenquota.wire.webhooks import encode_alert


@reports_errors
def alerts(
    subject: Annotated[
        str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")
    ],
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """A subject's alert events, newest first: thresholds crossed, denials, shadow blocks,
    and how their webhook deliveries stand."""
    ref = SubjectRef.parse(subject, "subject")  # refused before the store is opened
    with opened(db, timezone, config) as quota:
        webhooks = open_webhooks(quota, None)  # reading alerts signs nothing: no key needed
        if webhooks is None:
            raise Conflict("this store keeps no alerts")
        found, total = webhooks.subject_alerts(str(ref), offset=offset, limit=limit)
        tz = quota.tz
    if as_json:
        page: Page[object] = Page(items=list(found), total=total, offset=offset, limit=limit)
        print_json(encode_page([encode_alert(e, d) for e, d in found], page))
        return
    table = Listing(f"alerts of {ref}")
    for column in ("id", "at", "type", "metric", "window", "threshold", "used", "limit"):
        table.add_column(
            column,
            justify="right" if column in ("id", "threshold", "used", "limit") else "left",
            no_wrap=column in ("id", "at", "type"),
        )
    table.add_column("deliveries")
    for event, deliveries in found:
        table.add_row(
            str(event.id),
            when(event.at, tz),
            event.kind.value,
            event.metric,
            event.window or "-",
            "-" if event.threshold is None else f"{event.threshold}%",
            _amount(event, event.used),
            _amount(event, event.limit),
            _deliveries(deliveries),
        )
    out = console()
    out.print(table)
    out.print(page_note(len(found), total, offset, "alerts"))


def _amount(event: AlertEvent, units: int) -> str:
    return number(from_units(Metric(event.metric), units))


def _deliveries(deliveries: list[Delivery]) -> str:
    """How the event's deliveries stand, e.g. "2 delivered, 1 failed"; "-" when none."""
    counts = Counter(d.status.value for d in deliveries)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "-"
