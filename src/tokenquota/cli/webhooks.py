"""Webhook endpoints and their deliveries, on the store as ``serve`` opens it.

The commands read the store directly, with the same settings as the service,
so ``webhook_key`` must be the service's (TOKENQUOTA_WEBHOOK_KEY or the TOML
file of --config) for ``add`` and ``show --secret``. Delivery itself is the
service's worker: ``redeliver`` only marks a delivery due again.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from tokenquota.cli.common import (
    Config,
    Db,
    Timezone,
    actor,
    console,
    load_settings,
    opened,
    page_note,
    print_json,
    reports_errors,
    when,
)
from tokenquota.cli.tables import Listing
from tokenquota.domain.errors import Conflict
from tokenquota.domain.webhooks import Endpoint
from tokenquota.engine.webhooks import Webhooks, open_webhooks, server_key
from tokenquota.wire.webhooks import encode_delivery, encode_endpoint

webhooks_app = typer.Typer(
    help=(
        "Webhook endpoints that alert events are POSTed to, signed, and their deliveries "
        "(docs/webhooks.md). Needs webhook_key (TOKENQUOTA_WEBHOOK_KEY) as the service has it."
    ),
    no_args_is_help=True,
)

EndpointArg = Annotated[
    str, typer.Argument(help="The endpoint's id, wh_...", show_default=False, metavar="ID")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@contextmanager
def _webhooks(db: str | None, timezone: str | None, config: Path | None) -> Iterator[Webhooks]:
    settings = load_settings(config, db=db, timezone=timezone)
    key = server_key(settings.webhook_key.get_secret_value() if settings.webhook_key else None)
    with opened(db, timezone, config, settings=settings) as quota:
        webhooks = open_webhooks(quota, key)
        if webhooks is None:
            raise Conflict("this store keeps no webhooks")
        yield webhooks


@webhooks_app.command("add")
@reports_errors
def webhooks_add(
    url: Annotated[
        str, typer.Argument(help="http:// or https:// URL.", show_default=False, metavar="URL")
    ],
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            metavar="TYPE",
            help="threshold.crossed, limit.denied or shadow.blocked; repeat it (default all).",
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="Free text.")
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            metavar="TEXT",
            help="Your own signing secret (kept sealed); default: derived from the key.",
        ),
    ] = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Register an endpoint and print its signing secret."""
    with _webhooks(db, timezone, config) as webhooks:
        endpoint, shown = webhooks.create(
            url, events=events, description=description, secret=secret, actor=actor()
        )
    _print_with_secret(endpoint, shown, as_json)


@webhooks_app.command("list")
@reports_errors
def webhooks_list(
    as_json: AsJson = False, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Every endpoint; never a secret (see show --secret)."""
    with _webhooks(db, timezone, config) as webhooks:
        endpoints = webhooks.endpoints()
        tz = webhooks.quota.tz
    if as_json:
        print_json({"items": [encode_endpoint(e) for e in endpoints]})
        return
    table = Listing("webhooks")
    for column in ("id", "url", "events", "owner", "enabled", "created_at", "description"):
        table.add_column(column, no_wrap=column in ("id", "created_at"))
    for e in endpoints:
        table.add_row(
            e.id,
            e.url,
            " ".join(sorted(k.value for k in e.events)),
            e.owner or "",
            "yes" if e.enabled else "no",
            when(e.created_at, tz),
            e.description or "",
        )
    console().print(table)


@webhooks_app.command("show")
@reports_errors
def webhooks_show(
    endpoint_id: EndpointArg,
    secret: Annotated[bool, typer.Option("--secret", help="Print the signing secret too.")] = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """One endpoint, as JSON."""
    with _webhooks(db, timezone, config) as webhooks:
        endpoint = webhooks.get(endpoint_id)
        shown = webhooks.secret(endpoint_id) if secret else None
    print_json(encode_endpoint(endpoint, shown))


@webhooks_app.command("secret")
@reports_errors
def webhooks_secret(
    endpoint_id: EndpointArg,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            metavar="TEXT",
            help="Your own signing secret (kept sealed); default: a fresh random one.",
        ),
    ] = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Give an endpoint a new signing secret (a rotation) and print it."""
    with _webhooks(db, timezone, config) as webhooks:
        endpoint, shown = webhooks.set_secret(endpoint_id, secret, actor=actor())
    _print_with_secret(endpoint, shown, as_json)


@webhooks_app.command("remove")
@reports_errors
def webhooks_remove(
    endpoint_id: EndpointArg, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Remove an endpoint and its deliveries."""
    with _webhooks(db, timezone, config) as webhooks:
        webhooks.remove(endpoint_id, actor=actor())
    typer.echo(f"removed webhook {endpoint_id}")


@webhooks_app.command("disable")
@reports_errors
def webhooks_disable(
    endpoint_id: EndpointArg, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Stop deliveries to an endpoint; events meanwhile are not kept for it."""
    with _webhooks(db, timezone, config) as webhooks:
        webhooks.set_enabled(endpoint_id, False, actor=actor())
    typer.echo(f"disabled webhook {endpoint_id}")


@webhooks_app.command("enable")
@reports_errors
def webhooks_enable(
    endpoint_id: EndpointArg, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Resume deliveries to an endpoint."""
    with _webhooks(db, timezone, config) as webhooks:
        webhooks.set_enabled(endpoint_id, True, actor=actor())
    typer.echo(f"enabled webhook {endpoint_id}")


@webhooks_app.command("deliveries")
@reports_errors
def webhooks_deliveries(
    endpoint_id: EndpointArg,
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 100,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """An endpoint's deliveries, newest first: status, attempts, the last answer."""
    with _webhooks(db, timezone, config) as webhooks:
        items, total = webhooks.deliveries(endpoint_id, offset=offset, limit=limit)
        tz = webhooks.quota.tz
    if as_json:
        print_json(
            {
                "items": [encode_delivery(d) for d in items],
                "total": total,
                "offset": offset,
                "limit": limit,
            }
        )
        return
    table = Listing("deliveries")
    for column in ("id", "event", "status", "attempts", "last_status", "last_attempt", "error"):
        table.add_column(column, no_wrap=column in ("id", "last_attempt"))
    for d in items:
        table.add_row(
            str(d.id),
            str(d.event_id),
            d.status.value,
            str(d.attempts),
            "" if d.last_status is None else str(d.last_status),
            when(d.last_attempt_at, tz) if d.last_attempt_at else "",
            d.last_error or "",
        )
    out = console()
    out.print(table)
    out.print(page_note(len(items), total, offset, "deliveries"))


@webhooks_app.command("redeliver")
@reports_errors
def webhooks_redeliver(
    delivery_id: Annotated[
        str, typer.Argument(help="The delivery's id.", show_default=False, metavar="DELIVERY")
    ],
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Send a delivery again: pending, due now, a fresh round of attempts (the service sends)."""
    with _webhooks(db, timezone, config) as webhooks:
        delivery = webhooks.redeliver(delivery_id)
    typer.echo(f"delivery {delivery.id} is pending again")


def _print_with_secret(endpoint: Endpoint, shown: str, as_json: bool) -> None:
    """An endpoint with the secret it signs with: the one time a command prints it
    unasked (a new endpoint, a new secret)."""
    if as_json:
        print_json(encode_endpoint(endpoint, shown))
        return
    typer.echo(f"id      {endpoint.id}")
    typer.echo(f"url     {endpoint.url}")
    typer.echo(f"events  {', '.join(sorted(k.value for k in endpoint.events))}")
    typer.echo(f"secret  {shown}")
