"""The ``tokenquota`` command: every group and command, registered in one place."""

import typer

from tokenquota.cli import ledger, metering, prune, serve
from tokenquota.cli.grants import grants_app
from tokenquota.cli.holds import leases_app, reservations_app
from tokenquota.cli.keys import keys_app
from tokenquota.cli.resources import resources_app
from tokenquota.cli.rules import defaults_app, limits_app, plans_app
from tokenquota.cli.subjects import subjects_app

app = typer.Typer(
    name="tokenquota",
    help=(
        "Quota and usage metering for AI features. Every command opens the store named "
        "by --db (env TOKENQUOTA_DB). Changes are audited as TOKENQUOTA_ACTOR, else "
        "cli:<login>. Exit codes: 0 ok, 1 denied (consume, check, reservations create, "
        "leases acquire), 2 bad input."
    ),
    no_args_is_help=True,
    add_completion=False,
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
app.command("consume")(metering.consume)
app.command("check")(metering.check)
app.command("usage")(metering.usage)
app.command("history")(metering.history)
app.command("events")(ledger.events)
app.command("audit")(ledger.audit)
app.command("rebuild")(ledger.rebuild)
app.command("migrate")(ledger.migrate)
app.command("prune")(prune.prune)
app.command("serve")(serve.serve)
