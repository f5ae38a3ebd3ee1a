"""Spending and reading usage: consume, check, usage, history."""

from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from tokenquota import Decision, Mode
from tokenquota.cli.common import (
    EXIT_DENIED,
    READ_TIME_HELP,
    SUBJECT_HELP,
    TIME_HELP,
    Config,
    Db,
    Timezone,
    amounts_arg,
    amounts_text,
    console,
    number,
    opened,
    print_json,
    read_time_arg,
    reports_errors,
    status_table,
    tags_arg,
    time_arg,
    when,
)
from tokenquota.cli.tables import Listing
from tokenquota.domain.views import Granularity, GroupBy
from tokenquota.wire.decisions import encode_decision, encode_limit_status

SubjectArg = Annotated[
    str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")
]
# Amounts are taken as text so the engine alone decides what a valid amount is
# (whole numbers, exact decimals for credits, 63 bits) and names the field.
Tokens = Annotated[
    str | None,
    typer.Option(
        "--tokens",
        metavar="N",
        help="Total tokens; defaults to input + output when those are given.",
    ),
]
InputTokens = Annotated[str | None, typer.Option("--input-tokens", metavar="N")]
OutputTokens = Annotated[str | None, typer.Option("--output-tokens", metavar="N")]
Requests = Annotated[
    str | None, typer.Option("--requests", metavar="N", help="Requests; 1 unless given.")
]
Credits = Annotated[
    str | None, typer.Option("--credits", metavar="DECIMAL", help="Exact decimal, e.g. 0.25.")
]
Timestamp = Annotated[
    str | None,
    typer.Option(
        "--timestamp",
        metavar="ISO",
        help="When the usage happened (default now); may be back-dated. " + TIME_HELP,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Resource = Annotated[
    str | None,
    typer.Option(
        "--resource",
        metavar="REF",
        help="A protected resource (kind:id) whose quota also applies; see tokenquota resources.",
    ),
]


def _print_decision(decision: Decision, tz: ZoneInfo, *, dry_run: bool) -> None:
    out = console()
    verdict = "allowed" if decision.allowed else "denied"
    if dry_run:
        verdict = f"would be {verdict}"
    line = f"{verdict}: {decision.subject} {amounts_text(decision.amounts)}"
    if decision.event_id is not None:
        line += f" (event {decision.event_id})"
    out.print(line)
    if decision.replayed:
        out.print("replayed: this idempotency key was seen before; nothing more was charged")
    if decision.allowed and decision.limits:
        out.print(status_table(decision.limits, tz, "limits"))
    if decision.shadow_blocked:
        names = ", ".join(
            f"{s.subject} {s.metric}/{s.window or '-'}" for s in decision.shadow_blocked
        )
        out.print(f"shadow limits that would have blocked: {names}")
    if not decision.allowed:
        out.print(status_table(decision.blocked_by, tz, "blocked by"))
        if decision.retry_after is None:
            out.print("retry_after: never (waiting will not make room for this amount)")
        else:
            out.print(f"retry_after: {decision.retry_after} s")


@reports_errors
def consume(
    subject: SubjectArg,
    tokens: Tokens = None,
    input_tokens: InputTokens = None,
    output_tokens: OutputTokens = None,
    requests: Requests = None,
    credits: Credits = None,
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode",
            help="enforce: all or nothing against every limit; "
            "record: usage already spent, always stored.",
        ),
    ] = Mode.ENFORCE,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="A retry with the same key charges nothing more.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="NAME", help="Model name for history.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="Repeatable.")
    ] = None,
    timestamp: Timestamp = None,
    resource: Resource = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Spend for a subject and all its ancestors. Exit code 0 when allowed, 1 when denied."""
    amounts = amounts_arg(
        tokens=tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
        credits=credits,
    )
    at = time_arg(timestamp, "timestamp")
    tags = tags_arg(tag)
    with opened(db, timezone, config) as quota:
        decision = quota.consume(
            subject,
            amounts,
            mode=mode,
            idempotency_key=idempotency_key,
            timestamp=at,
            model=model,
            tags=tags,
            resource=resource,
        )
        if as_json:
            print_json(encode_decision(decision))
        else:
            _print_decision(decision, quota.tz, dry_run=False)
    if not decision.allowed:
        raise typer.Exit(EXIT_DENIED)


@reports_errors
def check(
    subject: SubjectArg,
    tokens: Tokens = None,
    input_tokens: InputTokens = None,
    output_tokens: OutputTokens = None,
    requests: Requests = None,
    credits: Credits = None,
    timestamp: Timestamp = None,
    resource: Resource = None,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """The decision a consume would get now, spending nothing. Exit code 0 or 1 as consume."""
    amounts = amounts_arg(
        tokens=tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
        credits=credits,
    )
    at = time_arg(timestamp, "timestamp")
    with opened(db, timezone, config) as quota:
        decision = quota.check(subject, amounts, timestamp=at, resource=resource)
        if as_json:
            print_json(encode_decision(decision))
        else:
            _print_decision(decision, quota.tz, dry_run=True)
    if not decision.allowed:
        raise typer.Exit(EXIT_DENIED)


@reports_errors
def usage(
    subject: SubjectArg,
    ancestors: Annotated[
        bool,
        typer.Option(
            "--ancestors/--no-ancestors",
            help="Also every ancestor's limits (they are charged too).",
        ),
    ] = False,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """What is used and left of every effective limit, and when each resets."""
    with opened(db, timezone, config) as quota:
        result = quota.usage(subject, include_ancestors=ancestors)
        if as_json:
            print_json(
                {
                    "subject": result.subject,
                    "at": result.at.isoformat(),
                    "limits": [encode_limit_status(s) for s in result.limits],
                }
            )
            return
        out = console()
        out.print(status_table(result.limits, quota.tz, f"usage of {result.subject}"))
        if not result.limits:
            out.print(f"{result.subject} has no limits (nothing set, no plan, no default)")


@reports_errors
def history(
    subject: SubjectArg,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            metavar="DATE",
            help="Default: 30 days before end. " + READ_TIME_HELP,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--end", metavar="DATE", help="Default: now. " + READ_TIME_HELP),
    ] = None,
    granularity: Annotated[Granularity, typer.Option("--granularity")] = Granularity.DAY,
    group_by: Annotated[GroupBy, typer.Option("--group-by")] = GroupBy.METRIC,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Usage over time from the ledger, in periods of the store's time zone."""
    time_arg(start, "start")  # a malformed time is refused before the store is opened
    time_arg(end, "end")
    with opened(db, timezone, config) as quota:
        begin = read_time_arg(start, "start", quota.tz)
        stop = read_time_arg(end, "end", quota.tz)
        points = quota.history(
            subject, start=begin, end=stop, granularity=granularity, group_by=group_by
        )
        if as_json:
            print_json(
                [
                    {
                        "start": p.start.isoformat(),
                        "end": p.end.isoformat(),
                        "metric": p.metric,
                        "model": p.model,
                        "value": p.value if isinstance(p.value, int) else str(p.value),
                    }
                    for p in points
                ]
            )
            return
        table = Listing(f"history of {subject} by {granularity.value}")
        table.add_column("period start", no_wrap=True)
        if group_by is GroupBy.MODEL:
            table.add_column("model")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for p in points:
            model = [p.model or "(none)"] if group_by is GroupBy.MODEL else []
            table.add_row(when(p.start, quota.tz), *model, p.metric, number(p.value))
        console().print(table)
