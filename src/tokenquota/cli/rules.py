"""Limits, defaults and plans: the three layers a subject's limits resolve from."""

from collections.abc import Iterable
from typing import Annotated

import typer

from tokenquota import DefaultRule, LimitsView, Plan, Quota, Rule
from tokenquota.cli.common import (
    METRIC_HELP,
    NEGATIVE_ARGS,
    SUBJECT_HELP,
    VALUE_HELP,
    WINDOW_HELP,
    Config,
    Db,
    Timezone,
    actor,
    console,
    limit_arg,
    limit_text,
    opened,
    reports_errors,
    rule_arg,
    source_text,
    window_arg,
    window_text,
)
from tokenquota.cli.tables import Listing
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import limit_to_wire

limits_app = typer.Typer(
    help="A subject's own limits (overrides), which win over its plan and the defaults.",
    no_args_is_help=True,
)
defaults_app = typer.Typer(
    help="System defaults per subject kind: the last layer before 'not limited'.",
    no_args_is_help=True,
)
plans_app = typer.Typer(
    help="Named sets of rules; changing a plan changes every subject on it at once.",
    no_args_is_help=True,
)

Subject = Annotated[str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")]
Metric = Annotated[str, typer.Argument(help=METRIC_HELP, show_default=False, metavar="METRIC")]
Window = Annotated[str, typer.Argument(help=WINDOW_HELP, show_default=False, metavar="WINDOW")]
OptionalWindow = Annotated[
    str | None,
    typer.Argument(
        help=WINDOW_HELP + " May be omitted for those two.", show_default=False, metavar="[WINDOW]"
    ),
]
Value = Annotated[str, typer.Argument(help=VALUE_HELP, show_default=False, metavar="VALUE")]
Shadow = Annotated[
    bool,
    typer.Option(
        "--shadow",
        help="Never block; count and log the decisions this limit would have blocked.",
    ),
]
Thresholds = Annotated[
    list[int] | None,
    typer.Option(
        "--threshold",
        metavar="PERCENT",
        help=(
            "An alert threshold in whole percent of the limit, repeatable "
            "(--threshold 80 --threshold 100): recorded once per window period when "
            "usage reaches it. Setting a rule without it removes its thresholds."
        ),
    ),
]
Kind = Annotated[
    str,
    typer.Argument(help="Subject kind, e.g. user or company.", show_default=False, metavar="KIND"),
]
PlanRef = Annotated[
    str, typer.Argument(help="Plan id or name.", show_default=False, metavar="PLAN")
]


def rule_cells(rule: Rule) -> tuple[str, str, str]:
    """Metric, window and limit as shown; rules hold units, people read the metric's own."""
    return (
        rule.key.metric.value,
        window_text(rule.key.window.key if rule.key.window else None),
        limit_text(limit_to_wire(rule.key.metric, rule.value)),
    )


def thresholds_cell(thresholds: Iterable[int]) -> str:
    return ", ".join(f"{t}%" for t in thresholds)


def plan_rule_arg(text: str, field: str) -> dict[str, object]:
    """``rule_arg``'s METRIC:WINDOW:LIMIT[:shadow], with alert thresholds after an @:
    ``tokens:day:50000@80,100``."""
    rule, sep, marks = text.partition("@")
    parsed = rule_arg(rule, field)
    if sep:
        try:
            parsed["thresholds"] = [int(m) for m in marks.split(",")]
        except ValueError:
            raise ValidationError(
                f"{field}.thresholds", f"{marks!r} is not whole percentages such as 80,100"
            ) from None
    return parsed


def rules_table(rules: Iterable[Rule], title: str) -> Listing:
    table = Listing(title)
    for name in ("metric", "window", "limit", "shadow", "alerts at"):
        table.add_column(name, justify="right" if name == "limit" else "left")
    for rule in rules:
        table.add_row(
            *rule_cells(rule), "yes" if rule.shadow else "", thresholds_cell(rule.thresholds)
        )
    return table


def _print_limits(quota: Quota, view: LimitsView) -> None:
    out = console()
    plan = f"{view.plan.name} ({view.plan.id})" if view.plan else "none"
    out.print(f"{view.subject}  plan: {plan}")
    out.print(rules_table(view.overrides, "overrides"))
    hits = quota.shadow_hits(view.subject)
    table = Listing("effective limits")
    for name in ("metric", "window", "limit", "source", "shadow hits", "alerts at"):
        table.add_column(name, justify="right" if name in ("limit", "shadow hits") else "left")
    for limit in view.effective:
        table.add_row(
            *rule_cells(Rule(limit.key, limit.value, limit.shadow)),
            source_text(limit.source.value, limit.shadow),
            str(hits.get(str(limit.key), 0)) if limit.shadow else "",
            thresholds_cell(limit.thresholds),
        )
    out.print(table)


# limits ---------------------------------------------------------------------
@limits_app.command("set", context_settings=NEGATIVE_ARGS)
@reports_errors
def limits_set(
    subject: Subject,
    metric: Metric,
    window: Window,
    value: Value,
    shadow: Shadow = False,
    threshold: Thresholds = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Set one override. Example: limits set user:alice tokens day 50000 --threshold 80."""
    with opened(db, timezone, config) as quota:
        view = quota.set_limit(
            subject,
            metric,
            window_arg(window),
            limit_arg(value),
            shadow=shadow,
            thresholds=threshold,
            actor=actor(),
        )
        _print_limits(quota, view)


@limits_app.command("unset")
@reports_errors
def limits_unset(
    subject: Subject,
    metric: Metric,
    window: OptionalWindow = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Remove an override, so the plan or default applies again. Usage is kept."""
    with opened(db, timezone, config) as quota:
        view = quota.set_limit(subject, metric, window_arg(window), None, actor=actor())
        _print_limits(quota, view)


@limits_app.command("show")
@reports_errors
def limits_show(
    subject: Subject, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Overrides, and every effective limit with where it comes from."""
    with opened(db, timezone, config) as quota:
        _print_limits(quota, quota.limits(subject))


# defaults -------------------------------------------------------------------
def _print_defaults(defaults: list[DefaultRule], kind: str | None) -> None:
    table = Listing("defaults")
    for name in ("kind", "metric", "window", "limit", "shadow", "alerts at", "origin"):
        table.add_column(name, justify="right" if name == "limit" else "left")
    for default in defaults:
        if kind is not None and default.kind != kind:
            continue
        table.add_row(
            default.kind,
            *rule_cells(default.rule),
            "yes" if default.rule.shadow else "",
            thresholds_cell(default.rule.thresholds),
            default.origin,
        )
    console().print(table)


@defaults_app.command("set", context_settings=NEGATIVE_ARGS)
@reports_errors
def defaults_set(
    kind: Kind,
    metric: Metric,
    window: Window,
    value: Value,
    shadow: Shadow = False,
    threshold: Thresholds = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Set a default for every subject of a kind. Example: defaults set user tokens day 10000."""
    with opened(db, timezone, config) as quota:
        defaults = quota.set_default(
            kind,
            metric,
            window_arg(window),
            limit_arg(value),
            shadow=shadow,
            thresholds=threshold,
            actor=actor(),
        )
        _print_defaults(defaults, kind)


@defaults_app.command("unset")
@reports_errors
def defaults_unset(
    kind: Kind,
    metric: Metric,
    window: OptionalWindow = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Remove a runtime default (one from the config file, if any, applies again)."""
    with opened(db, timezone, config) as quota:
        defaults = quota.set_default(kind, metric, window_arg(window), None, actor=actor())
        _print_defaults(defaults, kind)


@defaults_app.command("show")
@reports_errors
def defaults_show(
    kind: Annotated[
        str | None, typer.Option("--kind", metavar="KIND", help="Only this kind.")
    ] = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Every default, with whether it was set at run time or by the config file."""
    with opened(db, timezone, config) as quota:
        _print_defaults(quota.defaults(), kind)


# plans --------------------------------------------------------------------
def _print_plan(plan: Plan) -> None:
    out = console()
    out.print(f"plan {plan.name}  id: {plan.id}")
    out.print(rules_table(plan.rules, "rules"))


@plans_app.command("create")
@reports_errors
def plans_create(
    name: Annotated[
        str, typer.Argument(help="Unique plan name, e.g. Gold.", show_default=False, metavar="NAME")
    ],
    rule: Annotated[
        list[str] | None,
        typer.Option(
            "--rule",
            metavar="METRIC:WINDOW:LIMIT",
            help=(
                "A rule, repeatable: tokens:day:50000, credits:rolling:30d:20, "
                "concurrent_requests:-:4. Append :shadow for a shadow rule, and "
                "@80,100 for alert thresholds (tokens:day:50000@80,100)."
            ),
        ),
    ] = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Create a plan; prints its id, which (like the name) assigns it."""
    rules = [plan_rule_arg(text, f"rules[{i}]") for i, text in enumerate(rule or [])]
    with opened(db, timezone, config) as quota:
        _print_plan(quota.create_plan(name, rules, actor=actor()))


@plans_app.command("list")
@reports_errors
def plans_list(db: Db = None, timezone: Timezone = None, config: Config = None) -> None:
    """Every plan with its id and rules."""
    with opened(db, timezone, config) as quota:
        table = Listing("plans")
        for name in ("id", "name", "rules"):
            table.add_column(name)
        for plan in quota.plans():
            rules = "; ".join(
                f"{r.key} {rule_cells(r)[2]}" + (" (shadow)" if r.shadow else "")
                for r in plan.rules
            )
            table.add_row(plan.id, plan.name, rules)
        console().print(table)


@plans_app.command("show")
@reports_errors
def plans_show(
    plan: PlanRef, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """A plan (by id or name) and its rules."""
    with opened(db, timezone, config) as quota:
        _print_plan(quota.get_plan(plan))


@plans_app.command("delete")
@reports_errors
def plans_delete(
    plan: PlanRef, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Delete a plan; refused while subjects are still on it."""
    with opened(db, timezone, config) as quota:
        quota.delete_plan(plan, actor=actor())
        typer.echo(f"deleted plan {plan}")


@plans_app.command("assign")
@reports_errors
def plans_assign(
    subject: Subject, plan: PlanRef, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Put a subject on a plan (replacing any other); its overrides still win."""
    with opened(db, timezone, config) as quota:
        quota.assign_plan(subject, plan, actor=actor())
        _print_limits(quota, quota.limits(subject))


@plans_app.command("unassign")
@reports_errors
def plans_unassign(
    subject: Subject, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Take a subject off its plan; the defaults for its kind apply again."""
    with opened(db, timezone, config) as quota:
        quota.assign_plan(subject, None, actor=actor())
        _print_limits(quota, quota.limits(subject))
