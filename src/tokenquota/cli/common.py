"""What every command shares: options, opening the store, errors as exit codes, output.

The CLI is thin on purpose: it turns text into the arguments the engine takes,
lets the engine validate them, and prints what comes back. Anything that
decides (limits, windows, arithmetic) stays in the engine, so the CLI and the
HTTP API cannot disagree.
"""

import functools
import getpass
import json
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import pydantic
import typer
from rich.console import Console
from rich.text import Text

from tokenquota import UNLIMITED, LimitStatus, Quota, TokenQuotaError, ValidationError
from tokenquota.cli.tables import Listing
from tokenquota.settings import Settings, open_quota

P = ParamSpec("P")
R = TypeVar("R")
Number = int | Decimal

EXIT_DENIED: Final = 1
EXIT_BAD_INPUT: Final = 2
CONFIG_ENV: Final = "TOKENQUOTA_CONFIG"
NO_WINDOW: Final = "-"
# Lets "-1" (unlimited) through as a positional VALUE instead of an unknown option.
NEGATIVE_ARGS: Final[dict[str, Any]] = {"ignore_unknown_options": True}

# No envvar= on these: Settings reads TOKENQUOTA_* itself, so flags, the
# environment and the config file are weighed in one place, the way serve does.
Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        show_default=False,
        help=(
            "Store URL: sqlite:///path/file.db, postgresql://user@host/db (both migrated "
            "on open) or memory://. Else env TOKENQUOTA_DB, else db in the config file, "
            "else sqlite:///tokenquota.db."
        ),
    ),
]
Redis = Annotated[
    str | None,
    typer.Option(
        "--redis",
        metavar="URL",
        show_default=False,
        help=(
            "redis://host:port: the store's hot counters live there (see docs/redis.md). "
            "Else env TOKENQUOTA_REDIS, else redis in the config file."
        ),
    ),
]
Timezone = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        metavar="ZONE",
        show_default=False,
        help=(
            "IANA time zone of calendar windows (else env TOKENQUOTA_TIMEZONE, else the "
            "config file). A new store keeps the one given (default UTC); an existing "
            "store refuses another (`tokenquota rebuild --timezone` moves it)."
        ),
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        show_default=False,
        help=(
            "TOML settings file, the one serve reads (env TOKENQUOTA_CONFIG): its db, redis, "
            "timezone, strict_subjects and [[defaults]] apply here as in the service."
        ),
    ),
]

SUBJECT_HELP: Final = "Subject as kind:id, e.g. user:alice or company:acme."
METRIC_HELP: Final = (
    "tokens, input_tokens, output_tokens, requests, credits, "
    "concurrent_requests or input_sequence_length."
)
WINDOW_HELP: Final = (
    "minute, hour, day, week, month, year, total or rolling:<N>m|h|d. "
    "Use - for concurrent_requests and input_sequence_length, which take no window."
)
VALUE_HELP: Final = "The cap; 0 blocks everything, -1 (or 'unlimited') never blocks."
TIME_HELP: Final = "ISO 8601 with an offset, e.g. 2026-03-01T00:00:00Z."
READ_TIME_HELP: Final = (
    "A date (2026-03-01) or ISO 8601 date-time; without an offset it is read in the "
    "store's time zone."
)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the engine's errors into one stderr line and exit code 2.

    Bad input is the user's to fix, so a traceback would only hide the one
    thing they need: which field was wrong.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TokenQuotaError as exc:
            typer.echo(error_line(exc), err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def error_line(exc: TokenQuotaError) -> str:
    # ValidationError's message already starts with its field.
    field = exc.details.get("field")
    message = exc.message
    if field and not isinstance(exc, ValidationError):
        message = f"{field}: {message}"
    return " ".join(f"error: {message} [{exc.code}]".splitlines())


@contextmanager
def opened(
    db: str | None,
    timezone: str | None,
    config: Path | None = None,
    *,
    move_timezone: bool = False,
    redis: str | None = None,
    settings: Settings | None = None,
) -> Iterator[Quota]:
    """The store as ``serve`` would open it with these flags: see ``load_settings``.

    One exception: a command always fails closed. A process that exits at once
    would leave usage it admitted "open" in a spool file that no running
    process drains, so a person at a terminal gets the error instead.
    """
    if settings is None:  # a command with settings of its own resolved them the same way
        settings = load_settings(config, db=db, timezone=timezone, redis=redis)
    settings = settings.model_copy(update={"on_store_error": "closed"})
    with open_quota(settings, move_timezone=move_timezone) as quota:
        yield quota


def load_settings(config: Path | None, **flags: object) -> Settings:
    """Flags > ``TOKENQUOTA_*`` > the TOML file > defaults, failures as one-line errors.

    Every command resolves its settings here, serve included, so no command
    can read a store, a zone or a default the service would not.
    """
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise ValidationError("config", f"no such file: {str(path)!r}")
    try:
        return Settings.load(path, **flags)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError("config", f"{path} is not valid TOML ({exc})") from None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ValidationError(field, str(first["msg"])) from None


def actor() -> str:
    """Who the audit log names for changes made here.

    The CLI has no API key to identify its user, so it records the login name,
    which ``TOKENQUOTA_ACTOR`` overrides for scripts run on someone's behalf.
    """
    explicit = os.environ.get("TOKENQUOTA_ACTOR")
    if explicit:
        return explicit
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        login = "unknown"
    return f"cli:{login}"


# parsing: text to the values the engine validates ----------------------------
def window_arg(value: str | None) -> str | None:
    return None if value in (None, "", NO_WINDOW) else value


def limit_arg(value: str) -> str:
    return str(UNLIMITED) if value.strip().lower() == "unlimited" else value


def time_arg(value: str | None, field: str) -> datetime | None:
    """Parse only; the engine refuses naive times so nothing is guessed."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            field, f"{value!r} is not an ISO 8601 date-time with an offset, e.g. 2026-03-01T00:00Z"
        ) from None


def read_time_arg(value: str | None, field: str, tz: ZoneInfo) -> datetime | None:
    """A bound of a read: a date or a time without offset is taken in the store's zone.

    Periods of history are cut in that zone, so "--start 2026-11-29" means the
    day the store calls 2026-11-29. Writes (``--timestamp``) stay strict.
    """
    at = time_arg(value, field)
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=tz)
    return at


def json_arg(value: str, field: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValidationError(field, f"is not valid JSON ({exc.msg} at char {exc.pos})") from None


def tags_arg(values: Sequence[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    tags: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep:
            raise ValidationError("tags", f"{raw!r} is not KEY=VALUE")
        tags[key] = value
    return tags


def rule_arg(text: str, field: str) -> dict[str, object]:
    """``METRIC:WINDOW:LIMIT[:shadow]``; the window may itself hold a colon (rolling:30d)."""
    parts = text.split(":")
    shadow = len(parts) > 3 and parts[-1] == "shadow"
    if shadow:
        parts = parts[:-1]
    if len(parts) < 3:
        raise ValidationError(
            field,
            f"{text!r} is not METRIC:WINDOW:LIMIT (e.g. tokens:day:50000 or credits:month:20)",
        )
    return {
        "metric": parts[0],
        "window": window_arg(":".join(parts[1:-1])),
        "limit": limit_arg(parts[-1]),
        "shadow": shadow,
    }


def amounts_arg(**given: str | None) -> dict[str, str]:
    return {metric: value for metric, value in given.items() if value is not None}


# output -------------------------------------------------------------------
def console() -> Console:
    # Markup off: subject names, models and metadata are user text, and a
    # "[bold]" in one of them must print as written.
    return Console(markup=False, highlight=False, emoji=False)


def number(value: Number | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format(value, ",f")  # never exponent notation such as 2E+3
    return format(value, ",")


def limit_text(value: Number) -> str:
    return "unlimited" if value == UNLIMITED else number(value)


def when(value: datetime | None, tz: ZoneInfo) -> str:
    if value is None:
        return "-"
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def window_text(window: str | None) -> str:
    return window if window is not None else NO_WINDOW


def source_text(source: str, shadow: bool) -> str:
    return f"{source} (shadow)" if shadow else source


def amounts_text(amounts: Mapping[str, object]) -> str:
    return " ".join(f"{metric}={value}" for metric, value in amounts.items())


def status_table(statuses: Iterable[LimitStatus], tz: ZoneInfo, title: str) -> Listing:
    table = Listing(title)
    numbers = ("limit", "used", "reserved", "remaining")
    for name in ("subject", "metric", "window", "limit", "source", "used", "reserved", "remaining"):
        table.add_column(name, justify="right" if name in numbers else "left")
    table.add_column("reset_at", no_wrap=True)
    for s in statuses:
        remaining = Text(
            "unlimited" if s.limit == UNLIMITED else number(s.remaining),
            style="" if s.within_limit else "bold red",
        )
        table.add_row(
            s.subject,
            s.metric,
            window_text(s.window),
            limit_text(s.limit),
            source_text(s.source, s.shadow),
            number(s.used),
            number(s.reserved),
            remaining,
            when(s.reset_at, tz),
        )
    return table


def print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def page_note(shown: int, total: int, offset: int, what: str) -> str:
    return f"{shown} of {total} {what} shown (offset {offset})"
