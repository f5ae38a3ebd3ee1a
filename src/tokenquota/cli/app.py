"""The ``tokenquota`` command: every group and command, registered in one place."""

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from tokenquota.cli import alerts, insights, ledger, metering, prune, serve
from tokenquota.cli.grants import grants_app
from tokenquota.cli.holds import leases_app, reservations_app
from tokenquota.cli.keys import keys_app
from tokenquota.cli.resources import resources_app
from tokenquota.cli.rules import defaults_app, limits_app, plans_app
from tokenquota.cli.subjects import subjects_app
from tokenquota.cli.webhooks import webhooks_app

app = typer.Typer(
    name="tokenquota",
    help=(
        "Quota and usage metering for AI features. Every command reads its settings as "
        "serve does: flags, then TOKENQUOTA_* variables, then the TOML file of --config "
        "(env TOKENQUOTA_CONFIG), then defaults; so it opens the same store (--db) with "
        "the same zone, defaults and strict subjects. Changes are audited as "
        "TOKENQUOTA_ACTOR, else cli:<login>. Exit codes: 0 ok, 1 denied (consume, check, "
        "reservations create, leases acquire), 2 bad input."
    ),
    no_args_is_help=True,
    # Plain help: rich's labels every flag <bool>, and its markup would eat "[[defaults]]".
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)

app.add_typer(subjects_app, name="subjects")
app.add_typer(limits_app, name="limits")
app.add_typer(defaults_app, name="defaults")
app.add_typer(plans_app, name="plans")
app.add_typer(keys_app, name="keys")
app.add_typer(reservations_app, name="reservations")
app.add_typer(leases_app, name="leases")
app.add_typer(resources_app, name="resources")
app.add_typer(grants_app, name="grants")
app.add_typer(webhooks_app, name="webhooks")
app.command("consume")(metering.consume)
app.command("check")(metering.check)
app.command("usage")(metering.usage)
app.command("history")(metering.history)
app.command("top")(insights.top)
app.command("events")(ledger.events)
app.command("audit")(ledger.audit)
app.command("alerts")(alerts.alerts)
app.command("rebuild")(ledger.rebuild)
app.command("migrate")(ledger.migrate)
app.command("prune")(prune.prune)
app.command("serve")(serve.serve)


def installed_version() -> str:
    """The version of the installed distribution: the one number pyproject.toml sets."""
    try:
        return version("tokenquota")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(given: bool) -> None:
    if given:
        typer.echo(f"tokenquota {installed_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Options of the tokenquota command itself, before any subcommand."""
