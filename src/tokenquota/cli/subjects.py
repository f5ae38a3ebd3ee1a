"""Subjects and their parents: who is charged when a subject consumes."""

import json
from typing import Annotated

import typer

from tokenquota import NotFound, Quota, Subject, ValidationError
from tokenquota.cli.common import (
    SUBJECT_HELP,
    Config,
    Db,
    Timezone,
    actor,
    console,
    json_arg,
    opened,
    page_note,
    reports_errors,
)
from tokenquota.cli.tables import Listing

subjects_app = typer.Typer(
    help="Subjects (kind:id) and the parent graph usage is charged through.",
    no_args_is_help=True,
)

SubjectArg = Annotated[
    str, typer.Argument(help=SUBJECT_HELP, show_default=False, metavar="SUBJECT")
]


def _print_subject(quota: Quota, subject: Subject) -> None:
    plan = "none"
    if subject.plan_id is not None:
        try:
            plan = f"{quota.get_plan(subject.plan_id).name} ({subject.plan_id})"
        except NotFound:
            plan = subject.plan_id
    out = console()
    out.print(f"subject    {subject.ref}")
    out.print(f"name       {subject.name or '-'}")
    out.print(f"parents    {', '.join(map(str, subject.parents)) or '-'}")
    out.print(f"ancestors  {', '.join(map(str, quota.ancestors(subject.ref))) or '-'}")
    out.print(f"plan       {plan}")
    out.print(f"metadata   {json.dumps(dict(subject.metadata), sort_keys=True)}")


@subjects_app.command("put")
@reports_errors
def subjects_put(
    subject: SubjectArg,
    name: Annotated[
        str | None, typer.Option("--name", metavar="TEXT", help="Display name.")
    ] = None,
    parent: Annotated[
        list[str] | None,
        typer.Option(
            "--parent",
            metavar="SUBJECT",
            help="A parent (kind:id), repeatable; replaces the stored parents. "
            "Charging the subject charges every ancestor.",
        ),
    ] = None,
    no_parents: Annotated[
        bool, typer.Option("--no-parents", help="Detach the subject from all its parents.")
    ] = False,
    metadata: Annotated[
        str | None,
        typer.Option("--metadata", metavar="JSON", help="A JSON object; replaces the stored one."),
    ] = None,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Create or update a subject; options left out keep what is stored."""
    if parent and no_parents:
        raise ValidationError("parents", "give --parent or --no-parents, not both")
    parents: list[str] | None = [] if no_parents else (parent or None)
    meta = json_arg(metadata, "metadata") if metadata is not None else None
    with opened(db, timezone, config) as quota:
        _print_subject(
            quota,
            quota.put_subject(subject, name=name, parents=parents, metadata=meta, actor=actor()),
        )


@subjects_app.command("show")
@reports_errors
def subjects_show(
    subject: SubjectArg, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """A subject: name, parents, the ancestors charged with it, plan, metadata."""
    with opened(db, timezone, config) as quota:
        _print_subject(quota, quota.get_subject(subject))


@subjects_app.command("list")
@reports_errors
def subjects_list(
    kind: Annotated[
        str | None, typer.Option("--kind", metavar="KIND", help="Only this kind.")
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option("--parent", metavar="SUBJECT", help="Only direct children of this subject."),
    ] = None,
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most this many.")
    ] = 100,
    db: Db = None,
    timezone: Timezone = None,
    config: Config = None,
) -> None:
    """Subjects a page at a time, of one kind or under one parent if asked."""
    with opened(db, timezone, config) as quota:
        page = quota.list_subjects(kind=kind, parent=parent, offset=offset, limit=limit)
        table = Listing("subjects")
        for column in ("subject", "name", "parents", "plan"):
            table.add_column(column)
        for s in page.items:
            table.add_row(str(s.ref), s.name or "", ", ".join(map(str, s.parents)), s.plan_id or "")
        out = console()
        out.print(table)
        out.print(page_note(len(page.items), page.total, page.offset, "subjects"))


@subjects_app.command("delete")
@reports_errors
def subjects_delete(
    subject: SubjectArg, db: Db = None, timezone: Timezone = None, config: Config = None
) -> None:
    """Delete a subject; refused while it still has children. Its ledger events stay."""
    with opened(db, timezone, config) as quota:
        quota.delete_subject(subject, actor=actor())
        typer.echo(f"deleted {subject}")
