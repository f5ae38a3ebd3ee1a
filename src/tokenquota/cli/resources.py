"""Shared-capacity quotas on protected resources (contract §6).

The quota is given as the JSON object of the HTTP API (default_rules, policies,
capacity, saturation_threshold) and validated by the engine, whose errors name
the field at fault, e.g. ``policies[1].reserved``.
"""

import json
import sys
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from tokenquota import ValidationError
from tokenquota.cli.common import (
    Config,
    Db,
    Timezone,
    actor,
    console,
    number,
    opened,
    page_note,
    print_json,
    reports_errors,
    window_text,
)
from tokenquota.cli.metering import AsJson
from tokenquota.cli.tables import Listing
from tokenquota.domain.resources import ResourceQuota, ResourceRule
from tokenquota.domain.subjects import SubjectRef
from tokenquota.wire.catalog import encode_resource_quota

resources_app = typer.Typer(
    help=(
        "Shared-capacity quotas on protected resources (e.g. deployment:llama-70b): "
        "per-consumer rules, reserved shares and a capacity per minute. A consume, check, "
        "reservation or lease that names the resource with --resource is held to it."
    ),
    no_args_is_help=True,
)

ResourceArg = Annotated[
    str,
    typer.Argument(
        help="The resource as kind:id, e.g. deployment:llama-70b.",
        show_default=False,
        metavar="REF",
    ),
]
QUOTA_FIELDS = "default_rules, policies, capacity and saturation_threshold"


def _quota_input(file: str | None, inline: str | None) -> dict[str, Any]:
    """The quota object from --file (or - for stdin) or --json; exactly one of them."""
    if file is None and inline is None:
        raise ValidationError("file", "is required: give the quota with --file PATH or --json")
    if file is not None and inline is not None:
        raise ValidationError("file", "give the quota with --file or --json, not both")
    field = "file" if file is not None else "json"
    if file is not None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValidationError("file", f"cannot read {file!r}: {reason}") from None
    else:
        assert inline is not None
        text = inline
    try:
        # Decimal, not float: a share such as 0.12345678901234567891 stays exact.
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            field, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ValidationError(field, f"must be a JSON object with {QUOTA_FIELDS}")
    return data


def rule_text(rule: ResourceRule) -> str:
    return f"{rule.metric.value}/{window_text(rule.window.key if rule.window else None)} " + (
        number(rule.limit)
    )


def rules_text(rules: Iterable[ResourceRule]) -> str:
    return ", ".join(rule_text(r) for r in rules)


def capacity_text(quota: ResourceQuota) -> str:
    if quota.capacity is None:
        return "none (not capped)"
    return f"{number(quota.capacity.value)} {quota.capacity.units.value} per minute"


def threshold_text(quota: ResourceQuota) -> str:
    if quota.saturation_threshold is None:
        return "none (never saturated: reserved shares are not enforced)"
    return format(quota.saturation_threshold, "f")


def quota_wire(resource: SubjectRef, quota: ResourceQuota) -> dict[str, Any]:
    return {"resource": str(resource), **encode_resource_quota(quota)}


def _print_quota(resource: SubjectRef, quota: ResourceQuota) -> None:
    out = console()
    out.print(f"resource              {resource}")
    out.print(f"capacity              {capacity_text(quota)}")
    out.print(f"saturation_threshold  {threshold_text(quota)}")
    defaults = rules_text(quota.default_rules)
    out.print(f"default rules         {defaults or 'none'} (each consumer on its own)")
    if not quota.policies:
        out.print("policies              none")
        return
    table = Listing("policies")
    table.add_column("consumer")
    table.add_column("reserved", justify="right")
    table.add_column("rules (replace the default rules)")
    for policy in quota.policies:
        reserved = "-" if policy.reserved is None else format(policy.reserved, "f")
        table.add_row(str(policy.consumer), reserved, rules_text(policy.rules) or "none")
    out.print(table)


@resources_app.command("set")
@reports_errors
def resources_set(
    resource: ResourceArg,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="PATH",
            help=f"A JSON file with {QUOTA_FIELDS} (- reads standard input).",
        ),
    ] = None,
    inline: Annotated[
        str | None,
        typer.Option("--json", metavar="JSON", help="The same object inline, instead of --file."),
    ] = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Put a quota on a resource, replacing any earlier one. Audited.

    Example: --json '{"capacity": {"value": 600, "units": "requests"},
    "saturation_threshold": 0.8, "default_rules": [{"metric": "requests",
    "window": "minute", "limit": 100}], "policies": [{"consumer": "group:research",
    "rules": [], "reserved": 0.25}]}'
    """
    data = _quota_input(file, inline)
    with opened(db, timezone, config) as quota:
        parsed = quota.set_resource_quota(resource, data, actor=actor())
    ref = SubjectRef.parse(resource, "resource")
    console().print(f"quota set on {ref}")
    _print_quota(ref, parsed)


@resources_app.command("show")
@reports_errors
def resources_show(
    resource: ResourceArg,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """A resource's quota: capacity, threshold, default rules, policies and their shares."""
    with opened(db, timezone, config) as quota:
        found = quota.get_resource_quota(resource)
    ref = SubjectRef.parse(resource, "resource")
    if as_json:
        print_json(quota_wire(ref, found))
    else:
        _print_quota(ref, found)


@resources_app.command("list")
@reports_errors
def resources_list(
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 100,
    as_json: AsJson = False,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Every resource that carries a quota."""
    with opened(db, timezone, config) as quota:
        page = quota.resource_quotas(offset=offset, limit=limit)
    if as_json:
        print_json(
            {
                "items": [quota_wire(ref, q) for ref, q in page.items],
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
            }
        )
        return
    table = Listing("resource quotas")
    for column in ("resource", "capacity", "threshold", "default rules", "policies"):
        table.add_column(column, justify="right" if column == "policies" else "left")
    for ref, q in page.items:
        threshold = "-" if q.saturation_threshold is None else format(q.saturation_threshold, "f")
        capacity = (
            "-"
            if q.capacity is None
            else f"{number(q.capacity.value)} {q.capacity.units.value}/minute"
        )
        table.add_row(
            str(ref),
            capacity,
            threshold,
            rules_text(q.default_rules) or "-",
            number(len(q.policies)),
        )
    out = console()
    out.print(table)
    out.print(page_note(len(page.items), page.total, page.offset, "resource quotas"))


@resources_app.command("delete")
@reports_errors
def resources_delete(
    resource: ResourceArg,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Remove a resource's quota; usage already counted is kept. Audited."""
    with opened(db, timezone, config) as quota:
        quota.delete_resource_quota(resource, actor=actor())
    typer.echo(f"deleted the quota on {SubjectRef.parse(resource, 'resource')}")
