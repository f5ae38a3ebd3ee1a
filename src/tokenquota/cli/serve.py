"""``tokenquota serve``: the HTTP service on uvicorn (contract §9).

Options resolve as everywhere in the service: flags > ``TOKENQUOTA_*``
environment > TOML config file > defaults (``Settings.load``). The store is
opened once here before uvicorn starts, so migrations run once (not once per
worker) and a bad URL, zone or default is reported as one line, exit code 2,
instead of a traceback from inside a worker.
"""

import contextlib
import errno
import importlib.util
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final

import pydantic
import typer
import uvicorn

from tokenquota import ValidationError
from tokenquota.cli.common import EXIT_BAD_INPUT, load_settings, reports_errors
from tokenquota.cli.workers import Workers, reuse_port
from tokenquota.settings import Settings, UpstreamSetting, open_quota

# Named here rather than imported from the app: http.logs and http.metrics pull
# in uvicorn's and prometheus-client's modules, and the latter must not be
# imported before MULTIPROC_ENV is set.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# The factory each worker process calls; it reads SETTINGS_ENV.
APP_FACTORY: Final = "tokenquota.api:app_from_env"
SETTINGS_ENV: Final = "TOKENQUOTA_SETTINGS_JSON"
ADMIN_KEY_ENV: Final = "TOKENQUOTA_ADMIN_KEY"
LISTEN_BACKLOG: Final = 2048


@reports_errors
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="Interface to listen on (env TOKENQUOTA_HOST, default 127.0.0.1).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", metavar="N", help="TCP port (env TOKENQUOTA_PORT, default 8000)."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="URL",
            help=(
                "Store URL: sqlite:///path/file.db, postgresql://user@host/db or memory:// "
                "(env TOKENQUOTA_DB, default sqlite:///tokenquota.db in the working "
                "directory), migrated before the service starts."
            ),
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            help=(
                "redis://host:port (env TOKENQUOTA_REDIS): hot counters in Redis or a Redis "
                "Cluster, the ledger in --db (PostgreSQL for several replicas)."
            ),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="Worker processes sharing the port (env TOKENQUOTA_WORKERS, default 1).",
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            metavar="ZONE",
            help=(
                "IANA zone of calendar windows (env TOKENQUOTA_TIMEZONE). A new store "
                "takes it (default UTC); an existing store in another zone is refused "
                "with exit code 2: `tokenquota rebuild --timezone ZONE` moves it first."
            ),
        ),
    ] = None,
    strict_subjects: Annotated[
        bool | None,
        typer.Option(
            "--strict-subjects/--no-strict-subjects",
            help="Refuse subjects not created first (env TOKENQUOTA_STRICT_SUBJECTS, default off).",
            show_default=False,
        ),
    ] = None,
    on_store_error: Annotated[
        str | None,
        typer.Option(
            "--on-store-error",
            metavar="closed|open",
            help=(
                "While the store is unreachable: closed answers 503, open admits and queues "
                "the usage in --spool (env TOKENQUOTA_ON_STORE_ERROR, default closed)."
            ),
        ),
    ] = None,
    spool: Annotated[
        str | None,
        typer.Option(
            "--spool",
            metavar="FILE",
            help=(
                "With --on-store-error open: the local file of queued usage "
                "(env TOKENQUOTA_SPOOL, default tokenquota-spool.db)."
            ),
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help=(
                "One log line per request and per decision (env TOKENQUOTA_ACCESS_LOG, "
                "default off)."
            ),
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            metavar="json|text",
            help=(
                "Log lines as JSON objects or as text (env TOKENQUOTA_LOG_FORMAT, default json)."
            ),
        ),
    ] = None,
    keep_alive: Annotated[
        int | None,
        typer.Option(
            "--keep-alive",
            metavar="SECONDS",
            help=(
                "Idle keep-alive connections are closed after this long (env "
                "TOKENQUOTA_KEEP_ALIVE_SECONDS, default 5); behind a load balancer, set it "
                "above the balancer's idle timeout."
            ),
        ),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            metavar="NAME=URL",
            help=(
                "Gateway mode: an OpenAI-compatible model server under /openai/v1, URL its "
                "OpenAI base URL (http://vllm:8000/v1); repeatable. Keys and model lists: "
                "[[upstreams]] in the config file (docs/gateway.md)."
            ),
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help=(
                "TOML file with any of these settings, admin_key and defaults tables "
                "(env TOKENQUOTA_CONFIG)."
            ),
        ),
    ] = None,
) -> None:
    """Run the HTTP API (docs at /docs); TOKENQUOTA_ADMIN_KEY may hold a bootstrap admin key."""
    settings = load_settings(
        config,
        host=host,
        port=port,
        db=db,
        redis=redis,
        workers=workers,
        timezone=timezone,
        strict_subjects=strict_subjects,
        on_store_error=on_store_error,
        spool=spool,
        access_log=access_log,
        log_format=log_format,
        keep_alive_seconds=keep_alive,
    )
    if upstream:
        settings = with_upstreams(settings, upstream)
    if settings.workers > 1 and settings.db.lower().startswith("memory:"):
        # Each worker would count on its own, and the limit would be enforced once per worker.
        raise ValidationError(
            "workers", "memory:// lives in one process; use a sqlite:/// store with --workers > 1"
        )
    # Migrate once and validate the zone, the defaults and the spool before any worker starts.
    open_quota(settings).close()
    # Bound here and handed to uvicorn, so the banner never announces a port we lack.
    sockets = listening_sockets(settings)
    try:
        typer.echo(banner(settings))
        if settings.workers == 1:
            # Imported here: building the app pulls in FastAPI, which other commands never need.
            from tokenquota.api.app import create_app

            run_uvicorn(create_app(settings, freeze_heap=True), sockets, **server_options(settings))
            return
        # Worker processes rebuild the app from these settings instead of re-reading flags.
        os.environ[SETTINGS_ENV] = settings_json(settings)
        with shared_metrics():
            run_uvicorn(
                APP_FACTORY,
                sockets,
                factory=True,
                workers=settings.workers,
                **server_options(settings),
            )
    finally:
        for sock in sockets:
            sock.close()


def run_uvicorn(target: Any, sockets: list[socket.socket], **options: Any) -> None:
    """``uvicorn.run(target, **options)``, serving on ``sockets`` themselves.

    One worker serves its one socket; with several, worker ``i`` serves
    ``sockets[i]`` (``cli/workers.py``). The socket objects go to uvicorn, never
    their file numbers: uvicorn's ``fd=`` re-wraps a number as AF_UNIX, and the
    event loop then leaves Nagle's algorithm on for every connection it accepts,
    so each keep-alive answer (headers, then body: two writes) waited out the
    client's delayed ACK, about 40 ms a request (docs/performance-log.md).
    """
    config = uvicorn.Config(target, **options)
    if config.workers > 1:
        Workers(config, sockets, LISTEN_BACKLOG).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:
        raise typer.Exit(1)


def with_upstreams(settings: Settings, flags: list[str]) -> Settings:
    """The settings with each ``--upstream NAME=URL``: a new upstream, or a new URL for
    one of that name in the config file (which keeps its key and model list)."""
    rows = {row.name: row for row in settings.upstreams}
    for flag in flags:
        name, sep, url = flag.partition("=")
        if not sep or not name or not url:
            raise ValidationError("upstream", f"expected NAME=URL, got {flag!r}")
        known = rows.get(name)
        data = {**(known.model_dump() if known else {}), "name": name, "url": url}
        try:
            rows[name] = UpstreamSetting.model_validate(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValidationError(f"upstream.{field}", str(first["msg"])) from None
    return settings.model_copy(update={"upstreams": list(rows.values())})


def listening_sockets(settings: Settings) -> list[socket.socket]:
    """The service's sockets, one per worker, listening before anything says "listening".

    uvicorn would bind only after the banner and the app's startup, and a port
    already taken then surfaced as "listening on ..." followed by ``[Errno 98]``.
    A failure here is one line and exit code 2, as for any other bad setting.
    With several workers, the first socket is bound as a lone one would be (so a
    port that anything else listens on, another ``serve`` included, is refused)
    and the others join it with ``SO_REUSEPORT`` (``workers.reuse_port``).
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn sets it: a restart need not wait out the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        # Listening, not only bound: two bound sockets with SO_REUSEADDR may share a port
        # until one listens. Connections queue until uvicorn accepts; 2048 is its backlog.
        if settings.workers > 1:
            return reuse_port(sock, settings.workers, LISTEN_BACKLOG)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = f"port {settings.port} is in use; pass --port"
        else:
            message = f"cannot listen on {base_url(settings)}: {exc.strerror or exc}"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    return [sock]


def command() -> str:
    """How the user can run this same command line again, as a shell word.

    ``tokenquota`` when that name on PATH is the script running now; otherwise
    the script's own path (``make serve`` runs ``.venv/bin/tokenquota``, which
    is not on PATH), or ``python -m tokenquota.cli`` when no script runs at all.
    """
    script = Path(sys.argv[0])
    if script.name in ("tokenquota", "tokenquota.exe") and script.exists():
        found = shutil.which("tokenquota")
        if found and Path(found).resolve() == script.resolve():
            return "tokenquota"
        return shlex.quote(str(script.resolve()))
    return f"{shlex.quote(sys.executable)} -m tokenquota.cli"


@contextlib.contextmanager
def shared_metrics() -> Iterator[None]:
    """A fresh directory for the workers' Prometheus values, removed at exit.

    Set before uvicorn starts the workers, which read it when they first import
    prometheus-client (``http.metrics``); a directory left by an earlier run
    would add its counts to this one's, so an inherited setting is replaced.
    """
    directory = tempfile.mkdtemp(prefix="tokenquota-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def server_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn is told besides the app: the log configuration (``http.logs``),
    the keep-alive of the settings, and the fastest loop and parser it finds.

    "auto" is uvloop and httptools whenever they are installed, which
    ``uvicorn[standard]`` (a dependency) does wherever they exist (not on Windows
    or PyPy: there asyncio and h11 serve). The banner says which were found.
    With httptools, its protocol sends each answer in one write (``http_protocol``).
    """
    from tokenquota.http.logs import logging_config  # see MULTIPROC_ENV

    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "auto",
        "http": http_protocol(),
        # tokenquota.access writes the request lines, uvicorn's own are off (http/logs.py).
        "access_log": False,
        "log_config": logging_config(settings.log_format, settings.access_log),
        "timeout_keep_alive": settings.keep_alive_seconds,
    }


def http_protocol() -> Any:
    """uvicorn's httptools protocol sending an answer in one write
    (``http.protocol``), where httptools is installed; else uvicorn's "auto" (h11)."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"
    from tokenquota.http.protocol import CoalescingHttpToolsProtocol  # imports httptools

    return CoalescingHttpToolsProtocol


def engines() -> str:
    """The event loop and HTTP parser uvicorn's "auto" will pick here."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop}, {parser}"


def settings_json(settings: Settings) -> str:
    """The resolved settings for the worker processes, secret included.

    A pydantic dump masks a ``SecretStr`` as ``**********``; the workers need
    the real key, and the environment of our own children is where it already was.
    """
    data = settings.model_dump(mode="json")
    data["admin_key"] = settings.admin_key.get_secret_value() if settings.admin_key else None
    for row, dumped in zip(settings.upstreams, data["upstreams"], strict=True):
        dumped["api_key"] = row.api_key.get_secret_value() if row.api_key else None
    return json.dumps(data)


def base_url(settings: Settings) -> str:
    host = settings.host
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def banner(settings: Settings) -> str:
    url = base_url(settings)
    worker_text = "1 worker" if settings.workers == 1 else f"{settings.workers} workers"
    lines = [
        f"tokenquota listening on {url} ({worker_text}, store {redacted(settings.db)}"
        + (f", redis {redacted(settings.redis)})" if settings.redis else ")"),
        f"API docs: {url}/docs",
        f"serving with {engines()}; access log {'on' if settings.access_log else 'off'}, "
        f"keep-alive {settings.keep_alive_seconds} s",
    ]
    for row in settings.upstreams:
        lines.append(f"gateway: {url}/openai/v1 -> upstream {row.name} at {redacted(row.url)}")
    if settings.on_store_error == "open":
        lines.append(f"store unreachable: admit and queue in {settings.spool} (fails open)")
    if settings.admin_key is None:
        create = f"{command()} keys create --role admin --db {shlex.quote(settings.db)}"
        lines.append(f"admin key: none set; make one with: {create}")
    elif os.environ.get(ADMIN_KEY_ENV):
        lines.append(f"admin key: {ADMIN_KEY_ENV} is set")
    else:
        lines.append("admin key: admin_key is set in the config file")
    return "\n".join(lines)


def redacted(url: str) -> str:
    """The URL without a password, should one be in it (a future postgresql:// store)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{location}"
