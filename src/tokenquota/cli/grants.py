"""Prepaid credits: grant them, and list a subject's grants with its balance.

From its first grant on, a subject's credit spending in enforce mode must fit
its balance (what is left of its live grants, spent earliest expiry first).
"""

from typing import Annotated

import typer

from tokenquota.cli.common import (
    NEGATIVE_ARGS,
    SUBJECT_HELP,
    TIME_HELP,
    Config,
    Db,
    Timezone,
    actor,
    console,
    number,
    opened,
    print_json,
    reports_errors,
    time_arg,
    when,
)
from tokenquota.cli.metering import AsJson
from tokenquota.cli.tables import Listing
from tokenquota.domain.metrics import Metric, from_units
from tokenquota.wire.ledger import encode_balance, encode_grant

grants_app = typer.Typer(
    help=(
        "Prepaid credits. A subject that was ever granted credits is prepaid: its credit "
        "spending must fit its balance, and what is left of a grant lapses at its expiry."
    ),
    no_args_is_help=True,
)

SubjectArg = Annotated[
    str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")
]


def credits_text(units: int) -> str:
    return number(from_units(Metric.CREDITS, units))


# Text, so the engine decides what an amount of credits is and names the field;
# NEGATIVE_ARGS lets "-5" through to be refused as a credits error.
@grants_app.command("add", context_settings=NEGATIVE_ARGS)
@reports_errors
def grants_add(
    subject: SubjectArg,
    credits: Annotated[
        str,
        typer.Argument(
            help="More than 0; an exact decimal, e.g. 25 or 0.5.",
            show_default=False,
            metavar="CREDITS",
        ),
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            metavar="ISO",
            help="When what is left lapses (default never). " + TIME_HELP,
        ),
    ] = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Grant prepaid credits to a subject. Audited."""
    expires_at = time_arg(expires, "expires_at")
    with opened(db, timezone, config) as quota:
        grant = quota.grant(subject, credits, expires_at=expires_at, actor=actor())
        if as_json:
            print_json(encode_grant(grant, quota.clock.now()))
            return
        expiry = when(grant.expires_at, quota.tz) if grant.expires_at else "never"
        typer.echo(f"granted {credits_text(grant.amount)} credits to {grant.subject}")
        typer.echo(f"id       {grant.id}")
        typer.echo(f"expires  {expiry}")


@grants_app.command("list")
@reports_errors
def grants_list(
    subject: SubjectArg,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """A subject's grants (active, spent or expired) and its prepaid balance."""
    with opened(db, timezone, config) as quota:
        now = quota.clock.now()
        grants = quota.grants(subject)
        wallet = quota.balance(subject)
        if as_json:
            print_json(
                {
                    "items": [encode_grant(g, now) for g in grants],
                    "balance": encode_balance(wallet) if wallet else None,
                }
            )
            return
        out = console()
        if wallet is None:
            out.print(f"{subject} has no grants: it is not prepaid")
            return
        table = Listing(f"grants of {wallet.subject}")
        for column in ("id", "amount", "remaining", "granted", "expires", "state"):
            table.add_column(
                column,
                justify="right" if column in ("amount", "remaining") else "left",
                no_wrap=column in ("id", "granted", "expires"),
            )
        for grant in grants:
            table.add_row(
                grant.id,
                credits_text(grant.amount),
                credits_text(grant.remaining),
                when(grant.granted_at, quota.tz),
                when(grant.expires_at, quota.tz) if grant.expires_at else "never",
                str(encode_grant(grant, now)["state"]),
            )
        out.print(table)
        line = (
            f"balance: {credits_text(wallet.remaining)} credits left "
            f"of {credits_text(wallet.granted)} in live grants"
        )
        if wallet.next_expiry is not None:
            line += f"; next expiry {when(wallet.next_expiry, quota.tz)}"
        out.print(line)
