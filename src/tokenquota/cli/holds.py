"""Reservations and leases: budget held while an LLM call runs (contract §5).

A reservation holds an estimate until ``commit`` replaces it by what the call
really used or ``release`` frees it; a lease holds one concurrent_requests slot.
Both lapse by themselves after their TTL. A refused create or acquire exits
with code 1 and prints the blocking limits, as a denied consume does.
"""

from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from tokenquota import Decision, Quota, ValidationError
from tokenquota.cli.common import (
    EXIT_DENIED,
    SUBJECT_HELP,
    Config,
    Db,
    Timezone,
    amounts_arg,
    amounts_text,
    console,
    opened,
    print_json,
    reports_errors,
    status_table,
    when,
)
from tokenquota.cli.metering import (
    AsJson,
    Credits,
    InputTokens,
    OutputTokens,
    Requests,
    Resource,
    Tokens,
)
from tokenquota.domain.holds import DEFAULT_TTL, MAX_TTL, MIN_TTL, Lease, Reservation
from tokenquota.wire.decisions import encode_decision
from tokenquota.wire.holds import encode_hold, encode_lease, encode_reservation

reservations_app = typer.Typer(
    help=(
        "Hold an estimate before an LLM call, then commit what it really used or release "
        "it. Held amounts count as used for every other caller; a hold lapses by itself "
        "after its TTL."
    ),
    no_args_is_help=True,
)
leases_app = typer.Typer(
    help=(
        "Concurrency slots, checked against concurrent_requests limits. A lease lapses by "
        "itself after its TTL unless kept alive with heartbeat, so a crashed client cannot "
        "hold a slot forever."
    ),
    no_args_is_help=True,
)

SubjectArg = Annotated[
    str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")
]
ReservationId = Annotated[
    str,
    typer.Argument(help="The reservation's id (from reservations create).", show_default=False),
]
LeaseId = Annotated[
    str, typer.Argument(help="The lease's id (from leases acquire).", show_default=False)
]
# Text, so a bad value is one error line naming ttl rather than a usage box.
Ttl = Annotated[
    str | None,
    typer.Option(
        "--ttl",
        metavar="SECONDS",
        help=(
            f"How long the hold lives unless ended sooner: {int(MIN_TTL.total_seconds())} "
            f"to {int(MAX_TTL.total_seconds())} seconds (default {DEFAULT_TTL:g})."
        ),
        show_default=False,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", help="Print only the id, for ID=$(tokenquota …); nothing if refused."),
]


def ttl_arg(value: str | None) -> float:
    """Parse only; the engine checks the range and names ``ttl``."""
    if value is None:
        return DEFAULT_TTL
    try:
        return float(value)
    except ValueError:
        raise ValidationError("ttl", f"{value!r} is not a number of seconds") from None


def _print_refusal(decision: Decision, tz: ZoneInfo) -> None:
    out = console()
    out.print(f"denied: {decision.subject} {amounts_text(decision.amounts)}".rstrip())
    out.print("nothing is held")
    out.print(status_table(decision.blocked_by, tz, "blocked by"))
    if decision.retry_after is None:
        out.print("retry_after: never (waiting will not make room for this request)")
    else:
        out.print(f"retry_after: {decision.retry_after} s")


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in fields)
    out = console()
    for name, value in fields:
        out.print(f"{name.ljust(width)}  {value}")


def _reservation_fields(reservation: Reservation, wire: dict[str, Any], tz: ZoneInfo) -> None:
    _print_fields(
        [
            ("id", reservation.id),
            ("subject", str(reservation.subject)),
            ("resource", str(reservation.resource) if reservation.resource else "-"),
            ("amounts", amounts_text(wire["amounts"]) or "-"),
            ("state", str(wire["state"])),
            ("created", when(reservation.created_at, tz)),
            ("expires", when(reservation.expires_at, tz)),
        ]
    )


def _lease_fields(lease: Lease, wire: dict[str, Any], tz: ZoneInfo) -> None:
    fields = [
        ("id", lease.id),
        ("subject", str(lease.subject)),
        ("resource", str(lease.resource) if lease.resource else "-"),
        ("state", str(wire["state"])),
        ("created", when(lease.created_at, tz)),
        ("expires", when(lease.expires_at, tz)),
    ]
    if lease.released_at is not None:
        fields.append(("released", when(lease.released_at, tz)))
    _print_fields(fields)


# reservations ---------------------------------------------------------------------
@reservations_app.command("create")
@reports_errors
def reservations_create(
    subject: SubjectArg,
    tokens: Tokens = None,
    input_tokens: InputTokens = None,
    output_tokens: OutputTokens = None,
    requests: Requests = None,
    credits: Credits = None,
    ttl: Ttl = None,
    resource: Resource = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Hold an estimate for a subject and its ancestors. Exit code 0 when held, 1 when denied."""
    amounts = amounts_arg(
        tokens=tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
        credits=credits,
    )
    seconds = ttl_arg(ttl)
    with opened(db, timezone, config) as quota:
        reserved = quota.reserve(subject, amounts, ttl=seconds, resource=resource)
        headline = f"reserved: {subject} {amounts_text(reserved.decision.amounts)}"
        _report_hold(
            quota, "reservation", reserved.reservation, reserved.decision, headline, quiet, as_json
        )
    if reserved.reservation is None:
        raise typer.Exit(EXIT_DENIED)


def _report_hold(
    quota: Quota,
    name: str,
    hold: Reservation | Lease | None,
    decision: Decision,
    headline: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """A new reservation or lease: JSON, its id alone (--quiet), or a few lines; or the refusal."""
    if as_json:
        wire = encode_hold(hold, quota.clock.now()) if hold is not None else None
        print_json({name: wire, "decision": encode_decision(decision)})
    elif hold is None:
        if not quiet:
            _print_refusal(decision, quota.tz)
    elif quiet:
        typer.echo(hold.id)
    else:
        typer.echo(headline)
        typer.echo(f"id       {hold.id}")
        typer.echo(f"expires  {when(hold.expires_at, quota.tz)}")
        if hold.resource is not None:
            typer.echo(f"resource {hold.resource}")


@reservations_app.command("commit")
@reports_errors
def reservations_commit(
    reservation_id: ReservationId,
    tokens: Tokens = None,
    input_tokens: InputTokens = None,
    output_tokens: OutputTokens = None,
    requests: Requests = None,
    credits: Credits = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Replace the hold by what the call really used; no amounts records the held estimate.

    Never refused (the usage happened); a repeat prints the first commit's answer.
    A released or expired reservation is gone: record the usage with
    `tokenquota consume --mode record` instead.
    """
    amounts = amounts_arg(
        tokens=tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
        credits=credits,
    )
    with opened(db, timezone, config) as quota:
        decision = quota.commit(reservation_id, amounts)
        if as_json:
            print_json(encode_decision(decision))
            return
        out = console()
        line = f"committed: {decision.subject} {amounts_text(decision.amounts)}"
        if decision.event_id is not None:
            line += f" (event {decision.event_id})"
        out.print(line)
        if decision.replayed:
            out.print("replayed: this reservation was committed before; nothing more was charged")
        if decision.limits:
            out.print(status_table(decision.limits, quota.tz, "limits"))


@reservations_app.command("release")
@reports_errors
def reservations_release(
    reservation_id: ReservationId,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Free a hold now. Releasing one already committed or released is a no-op."""
    with opened(db, timezone, config) as quota:
        freed = quota.release(reservation_id)
    if as_json:
        print_json({"released": freed})
    elif freed:
        typer.echo(f"released: the hold of reservation {reservation_id} is freed")
    else:
        typer.echo(
            f"nothing to free: reservation {reservation_id} was already committed or released"
        )


@reservations_app.command("show")
@reports_errors
def reservations_show(
    reservation_id: ReservationId,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """One reservation: what it holds and its state (held, committed, released or expired)."""
    with opened(db, timezone, config) as quota:
        reservation = quota.get_reservation(reservation_id)
        wire = encode_reservation(reservation, quota.clock.now())
        if as_json:
            print_json(wire)
        else:
            _reservation_fields(reservation, wire, quota.tz)


# leases ---------------------------------------------------------------------------
@leases_app.command("acquire")
@reports_errors
def leases_acquire(
    subject: SubjectArg,
    ttl: Ttl = None,
    resource: Resource = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Take a concurrency slot on a subject and its ancestors. Exit code 0, or 1 when full."""
    seconds = ttl_arg(ttl)
    with opened(db, timezone, config) as quota:
        acquired = quota.acquire(subject, ttl=seconds, resource=resource)
        headline = f"acquired: a concurrency slot for {subject}"
        _report_hold(quota, "lease", acquired.lease, acquired.decision, headline, quiet, as_json)
    if acquired.lease is None:
        raise typer.Exit(EXIT_DENIED)


@leases_app.command("release")
@reports_errors
def leases_release(
    lease_id: LeaseId,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Give a slot back now. Releasing one already released is a no-op."""
    with opened(db, timezone, config) as quota:
        freed = quota.release_lease(lease_id)
    if as_json:
        print_json({"released": freed})
    elif freed:
        typer.echo(f"released: lease {lease_id} gave its slot back")
    else:
        typer.echo(f"nothing to free: lease {lease_id} was already released")


@leases_app.command("heartbeat")
@reports_errors
def leases_heartbeat(
    lease_id: LeaseId,
    ttl: Ttl = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Keep a live lease: it now expires TTL seconds from now. A lapsed lease is gone."""
    seconds = ttl_arg(ttl)
    with opened(db, timezone, config) as quota:
        lease = quota.heartbeat(lease_id, ttl=seconds)
        if as_json:
            print_json(encode_lease(lease, quota.clock.now()))
        else:
            typer.echo(f"extended: lease {lease.id} expires {when(lease.expires_at, quota.tz)}")


@leases_app.command("show")
@reports_errors
def leases_show(
    lease_id: LeaseId,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """One lease and its state (held, released or expired)."""
    with opened(db, timezone, config) as quota:
        lease = quota.get_lease(lease_id)
        wire = encode_lease(lease, quota.clock.now())
        if as_json:
            print_json(wire)
        else:
            _lease_fields(lease, wire, quota.tz)
