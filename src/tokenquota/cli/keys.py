"""API keys for the HTTP service: create (the secret is shown once), list, revoke."""

from typing import Annotated

import typer

from tokenquota.cli.common import (
    SUBJECT_HELP,
    Config,
    Db,
    Timezone,
    actor,
    console,
    opened,
    page_note,
    print_json,
    reports_errors,
    when,
)
from tokenquota.cli.tables import Listing
from tokenquota.wire.catalog import encode_key

keys_app = typer.Typer(
    help=(
        "API keys for the HTTP service. Only a hash is stored: the secret is printed "
        "once, at creation, and never again."
    ),
    no_args_is_help=True,
)


@keys_app.command("create")
@reports_errors
def keys_create(
    # Text, not an enum: the engine alone decides what a role is and names the field.
    role: Annotated[
        str,
        typer.Option(
            "--role",
            metavar="admin|staff|service|member",
            help=(
                "admin: everything; staff: limits, plans, any usage, no keys; "
                "service: consume and check for any subject; member: one subject."
            ),
            show_default=False,
        ),
    ],
    subject: Annotated[
        str | None,
        typer.Option("--subject", metavar="REF", help="Member keys only. " + SUBJECT_HELP),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="TEXT", help="A label for the key, e.g. who holds it."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", help="Print only the key, for KEY=$(tokenquota keys create …)."),
    ] = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Make a key and print its secret, this once. Send it as Authorization: Bearer <key>."""
    with opened(db, timezone, config) as quota:
        key, secret = quota.create_key(role, subject=subject, name=name, actor=actor())
    if quiet:
        typer.echo(secret)
        return
    if as_json:
        print_json({**encode_key(key), "key": secret})
        return
    typer.echo(f"id       {key.id}")
    typer.echo(f"role     {key.role.value}")
    if key.subject is not None:
        typer.echo(f"subject  {key.subject}")
    if key.name is not None:
        typer.echo(f"name     {key.name}")
    typer.echo(f"key      {secret}")
    typer.echo("The key is shown only this once: store it now. It cannot be recovered.", err=True)


@keys_app.command("list")
@reports_errors
def keys_list(
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 100,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Every key, live or revoked; never a secret (none is stored)."""
    with opened(db, timezone, config) as quota:
        page = quota.list_keys(offset=offset, limit=limit)
        table = Listing("keys")
        for column in ("id", "role", "subject", "name", "created_at", "revoked_at"):
            table.add_column(column, no_wrap=column in ("id", "created_at", "revoked_at"))
        for key in page.items:
            table.add_row(
                key.id,
                key.role.value,
                str(key.subject) if key.subject else "",
                key.name or "",
                when(key.created_at, quota.tz),
                when(key.revoked_at, quota.tz) if key.revoked_at else "",
            )
        out = console()
        out.print(table)
        out.print(page_note(len(page.items), page.total, page.offset, "keys"))


@keys_app.command("revoke")
@reports_errors
def keys_revoke(
    key_id: Annotated[
        str, typer.Argument(help="The key's id (from keys list).", show_default=False, metavar="ID")
    ],
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Revoke a key: the next request made with it is refused with 401."""
    with opened(db, timezone, config) as quota:
        quota.revoke_key(key_id, actor=actor())
    typer.echo(f"revoked key {key_id}")
