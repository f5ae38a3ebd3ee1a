"""``tokenquota serve`` as users run it: a real process, a real port, keys from the CLI.

Each test starts the command as a subprocess on a free port and a SQLite file
in tmp, talks to it over HTTP, and stops it with SIGTERM. The output goes to a
file, not a pipe: a pipe nobody reads fills up and would stall the server.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import tokenquota
from tokenquota.api.app import app_from_env, create_app
from tokenquota.cli import app
from tokenquota.cli.serve import SETTINGS_ENV, listening_sockets, settings_json
from tokenquota.http.protocol import CoalescingHttpToolsProtocol
from tokenquota.settings import Settings

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).with_name("tokenquota")
# The installed console script when there is one (what users run), else the same entry point.
TOKENQUOTA = (
    [str(SCRIPT)]
    if SCRIPT.exists()
    else [sys.executable, "-c", "from tokenquota.cli import main; main()"]
)
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 20.0
COMMAND_TIMEOUT_SECONDS = 60.0
ADMIN_KEY = "serve-test-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any TOKENQUOTA_* that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENQUOTA_")}
    env.update({"TOKENQUOTA_ACTOR": "tester", "NO_COLOR": "1", "COLUMNS": "250"})
    env.update(extra)
    return env


class Served:
    """One ``tokenquota serve`` process."""

    def __init__(self, tmp_path: Path, args: list[str], port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp_path / f"serve-{port}.log"
        with self.log.open("wb") as sink:
            # Its own process group, so cleanup reaches uvicorn's worker processes too.
            self.process = subprocess.Popen(
                [*TOKENQUOTA, "serve", *args],
                cwd=tmp_path,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"serve did not answer /healthz in {START_TIMEOUT_SECONDS} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM, and the exit code once uvicorn has shut down gracefully."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def kill(self) -> None:
        """Kill the process group this test started (the server and any workers), if alive."""
        # The group id stays taken while any member lives, so this reaches only ours.
        with contextlib.suppress(ProcessLookupError):  # already gone, workers included
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


StartServe = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServe]:
    """Start ``tokenquota serve ARGS`` and wait until it is healthy; always killed after."""
    started: list[Served] = []

    def start(*args: str, port: int, env: dict[str, str] | None = None) -> Served:
        served = Served(tmp_path, list(args), port, env if env is not None else clean_env())
        started.append(served)
        served.wait_healthy()
        return served

    try:
        yield start
    finally:
        for served in started:
            served.kill()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """A CLI command in its own process, as an operator beside the server would run it."""
    result = subprocess.run(
        [*TOKENQUOTA, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def create_key(db: str, cwd: Path, role: str) -> tuple[str, str]:
    """(id, secret) of a new key, made by ``tokenquota keys create``."""
    fields = dict(
        line.split(maxsplit=1)
        for line in run_cli("keys", "create", "--role", role, "--db", db, cwd=cwd).splitlines()
        if line.strip()
    )
    assert fields["role"] == role
    return fields["id"], fields["key"]


def consume(url: str, key: str, subject: str, tokens: int) -> httpx.Response:
    # A new connection per request, so uvicorn's workers share the load.
    return httpx.post(
        f"{url}/v1/consume",
        json={"subject": subject, "amounts": {"tokens": tokens}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_serve_migrates_serves_keys_from_the_cli_and_stops_on_sigterm(
    tmp_path: Path, serve: StartServe
) -> None:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    port = free_port()
    server = serve("--port", str(port), "--db", db, port=port)

    banner = server.output()
    assert f"listening on http://127.0.0.1:{port}" in banner
    assert f"http://127.0.0.1:{port}/docs" in banner
    assert f"tokenquota keys create --role admin --db {db}" in banner

    key_id, key = create_key(db, tmp_path, "service")
    run_cli("limits", "set", "user:alice", "tokens", "day", "100", "--db", db, cwd=tmp_path)
    first = consume(server.url, key, "user:alice", 60)
    assert first.status_code == 200, first.text
    assert first.json()["allowed"] is True
    assert first.headers["RateLimit-Remaining"] == "40"
    denied = consume(server.url, key, "user:alice", 60)
    assert denied.status_code == 429
    assert denied.json()["error"]["code"] == "quota_exceeded"

    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'operation="consume",outcome="allowed"} 1.0' in metrics
    assert 'operation="consume",outcome="denied"} 1.0' in metrics

    listed = run_cli("keys", "list", "--db", db, cwd=tmp_path)
    assert key_id in listed
    assert key not in listed
    run_cli("keys", "revoke", key_id, "--db", db, cwd=tmp_path)
    # The server trusts a key it looked up for key_cache_seconds (1 s by default):
    # revoked by another process, the key is refused within that bound.
    revoked_at = time.monotonic()
    while (status := consume(server.url, key, "user:alice", 0).status_code) != 401:
        assert status == 200
        assert time.monotonic() - revoked_at < 1 + 5, "still accepted long after the bound"
        time.sleep(0.1)

    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM, or 0.
    assert server.terminate() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()


def reuse_port_listener() -> socket.socket:
    """A listening socket as another ``serve --workers N`` holds its port (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "holder", [lambda: socket.create_server(("127.0.0.1", 0)), reuse_port_listener]
)
def test_a_taken_port_is_one_line_and_exit_2_before_any_banner(
    tmp_path: Path, holder: Callable[[], socket.socket], workers: str
) -> None:
    """Also when the port's holder would let a SO_REUSEPORT socket join it: with several
    workers, serve's sockets share their port that way, but never with another server."""
    db = f"sqlite:///{tmp_path / 't.db'}"
    with holder() as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*TOKENQUOTA, "serve", "--port", str(port), "--workers", workers, "--db", db],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: port {port} is in use; pass --port"]


def test_the_banner_s_command_runs_as_printed(tmp_path: Path, serve: StartServe) -> None:
    """The banner names a command the user can paste, with or without the venv on PATH."""
    db = f"sqlite:///{tmp_path / 'banner.db'}"
    port = free_port()
    scripts = str(Path(TOKENQUOTA[0]).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != scripts)
    server = serve("--port", str(port), "--db", db, port=port, env=clean_env(PATH=path))

    (line,) = [x for x in server.output().splitlines() if x.startswith("admin key: none set")]
    command = line.partition("make one with: ")[2]
    done = subprocess.run(
        shlex.split(command),
        cwd=tmp_path,
        env=clean_env(PATH=path),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, command + "\n" + done.stderr
    secret = dict(x.split(maxsplit=1) for x in done.stdout.splitlines() if x.strip())["key"]
    assert consume(server.url, secret, "user:alice", 1).status_code == 200


def test_two_workers_share_one_store_and_its_limits(tmp_path: Path, serve: StartServe) -> None:
    db = f"sqlite:///{tmp_path / 'workers.db'}"
    port = free_port()
    # The bootstrap key must reach the workers in clear, not as pydantic's "**********".
    env = clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN_KEY)
    run_cli("limits", "set", "user:bob", "tokens", "day", "100", "--db", db, cwd=tmp_path)
    server = serve("--port", str(port), "--db", db, "--workers", "2", port=port, env=env)

    codes = [consume(server.url, ADMIN_KEY, "user:bob", 10).status_code for _ in range(20)]
    assert codes.count(200) == 10
    assert codes.count(429) == 10
    output = server.output()
    assert "2 workers" in output
    assert output.count("Started server process") == 2
    assert server.terminate() in (0, -signal.SIGTERM)


def workers_of(server: Served) -> list[int]:
    """The worker processes of a ``--workers N`` server, once each has started its app."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while server.output().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    cmdlines = {int(c): Path(f"/proc/{c}/cmdline").read_bytes() for c in children}
    return [
        c
        for c, line in cmdlines.items()
        if b"spawn_main" in line and b"resource_tracker" not in line
    ]


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on 127.0.0.1:``port`` (/proc/net/tcp, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            found.add(fields[9])
    return found


def sockets_of(pid: int) -> set[str]:
    """The socket inodes among a process's open files."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[len("socket:[") : -1])
    return found


def serving_process(url: str) -> str:
    """Which worker answered a request on a new connection: the process half of the
    request id it made (http/logs.py)."""
    with httpx.Client(timeout=30) as client:  # one connection, closed after
        answer = client.get(f"{url}/healthz")
    assert answer.status_code == 200
    return answer.headers["x-request-id"][:16]


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_each_worker_listens_on_a_socket_of_its_own_and_both_answer(
    tmp_path: Path, serve: StartServe
) -> None:
    """With one shared socket, whichever worker woke first accepted a connection, and
    kept-alive connections stay where they were accepted: in the bench one worker of two
    often served all 64 (docs/performance-log.md). Each worker now has its own socket on
    the port (SO_REUSEPORT) and the kernel spreads connections over them."""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'reuse.db'}"
    server = serve("--port", str(port), "--db", db, "--workers", "2", port=port)
    workers = workers_of(server)
    assert len(workers) == 2
    listening = listening_inodes(port)
    assert len(listening) == 2
    # Each worker holds one of them, not the same one; the supervisor holds both.
    held = [sockets_of(pid) & listening for pid in workers]
    assert len(held[0]) == len(held[1]) == 1
    assert held[0] != held[1]
    assert sockets_of(server.process.pid) & listening == listening
    # 40 new connections, hashed by their source ports: one worker alone would take
    # them all with a chance of 2 ** -39.
    answered = Counter(serving_process(server.url) for _ in range(40))
    assert len(answered) == 2, answered
    assert server.terminate() in (0, -signal.SIGTERM)
    assert server.output().count("Application shutdown complete") == 2


def test_a_bootstrap_admin_key_from_the_environment(tmp_path: Path, serve: StartServe) -> None:
    db = f"sqlite:///{tmp_path / 'bootstrap.db'}"
    port = free_port()
    env = clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN_KEY, TOKENQUOTA_DB=db, TOKENQUOTA_PORT=str(port))
    server = serve(port=port, env=env)

    assert "admin key: TOKENQUOTA_ADMIN_KEY is set" in server.output()
    assert "keys create" not in server.output()
    assert consume(server.url, ADMIN_KEY, "user:carol", 5).status_code == 200
    assert consume(server.url, ADMIN_KEY + "x", "user:carol", 5).status_code == 401
    assert consume(server.url, "tq_" + ADMIN_KEY, "user:carol", 5).status_code == 401


def test_a_toml_config_sets_the_port_and_a_default_limit(tmp_path: Path, serve: StartServe) -> None:
    db = f"sqlite:///{tmp_path / 'configured.db'}"
    port = free_port()
    config = tmp_path / "tokenquota.toml"
    config.write_text(
        f'db = "{db}"\n'
        f"port = {port}\n"
        f'admin_key = "{ADMIN_KEY}"\n'
        "\n"
        "[[defaults]]\n"
        'kind = "user"\n'
        'metric = "tokens"\n'
        'window = "day"\n'
        "limit = 50\n",
        encoding="utf-8",
    )
    server = serve("--config", str(config), port=port)

    assert f"listening on http://127.0.0.1:{port}" in server.output()
    assert "admin_key is set in the config file" in server.output()
    allowed = consume(server.url, ADMIN_KEY, "user:dave", 40)
    assert allowed.status_code == 200
    assert allowed.headers["RateLimit-Limit"] == "50"
    assert consume(server.url, ADMIN_KEY, "user:dave", 20).status_code == 429
    # The default is per subject: another user has a fresh 50.
    assert consume(server.url, ADMIN_KEY, "user:erin", 20).status_code == 200


# resolution and refusals, in process: run_uvicorn is replaced, nothing listens -----
def invoke(*args: str, env: dict[str, str | None] | None = None) -> Any:
    # Named, so the runner puts back whatever serve sets in this process's environment.
    base: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TOKENQUOTA_")}
    base[SETTINGS_ENV] = None
    return CliRunner().invoke(app, ["serve", *args], env={**base, **(env or {})})


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_run(target: Any, sockets: list[socket.socket], **kwargs: Any) -> None:
        # The bound sockets themselves, never their numbers (run_uvicorn: an AF_UNIX
        # wrapping left Nagle on), one per worker, all listening on one port. What the
        # workers would inherit: the CliRunner restores the environment afterwards.
        assert len(sockets) == kwargs.get("workers", 1)
        assert all(sock.family in (socket.AF_INET, socket.AF_INET6) for sock in sockets)
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for sock in sockets)
        assert len({sock.getsockname() for sock in sockets}) == 1
        assert "fd" not in kwargs
        calls.append((target, {**kwargs, "settings_json": os.environ.get(SETTINGS_ENV)}))

    def any_free_port(settings: Settings) -> list[socket.socket]:
        # Not the port asked for (8000 may be some other server's): nothing listens here.
        return listening_sockets(settings.model_copy(update={"host": "127.0.0.1", "port": 0}))

    monkeypatch.setattr("tokenquota.cli.serve.run_uvicorn", fake_run)
    monkeypatch.setattr("tokenquota.cli.serve.listening_sockets", any_free_port)
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    return calls


def test_flags_beat_the_environment_which_beats_the_config_file(
    tmp_path: Path, uvicorn_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'db = "sqlite:///{tmp_path / "c.db"}"\nport = 1111\nhost = "127.0.0.2"\nworkers = 3\n'
    )
    result = invoke("--config", str(config), "--port", "2222", env={"TOKENQUOTA_HOST": "127.0.0.3"})
    assert result.exit_code == 0, result.output
    ((target, kwargs),) = uvicorn_calls
    assert target == "tokenquota.api:app_from_env"
    assert kwargs["factory"] is True
    assert kwargs["workers"] == 3
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.3", 2222)
    assert "listening on http://127.0.0.3:2222 (3 workers" in result.stdout


def test_uvicorn_serves_without_an_access_log_unless_asked_and_with_the_keep_alive(
    tmp_path: Path, uvicorn_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    quiet = invoke("--db", db)
    assert quiet.exit_code == 0, quiet.output
    asked = invoke("--db", db, "--workers", "2", "--access-log", "--keep-alive", "75")
    assert asked.exit_code == 0, asked.output
    from_env = invoke("--db", db, env={"TOKENQUOTA_ACCESS_LOG": "true"})
    assert from_env.exit_code == 0, from_env.output

    (_, first), (_, second), (_, third) = uvicorn_calls

    def access_level(kwargs: dict[str, Any]) -> str:
        # The request lines are tokenquota.access's (http/logs.py); uvicorn's own stay off.
        assert kwargs["access_log"] is False
        level: str = kwargs["log_config"]["loggers"]["tokenquota.access"]["level"]
        return level

    assert (access_level(first), first["timeout_keep_alive"]) == ("WARNING", 5)
    assert (access_level(second), second["timeout_keep_alive"]) == ("INFO", 75)
    assert access_level(third) == "INFO"
    # uvloop and httptools when there; httptools's protocol sending an answer in one write.
    assert (first["loop"], first["http"]) == ("auto", CoalescingHttpToolsProtocol)
    assert "access log off, keep-alive 5 s" in quiet.stdout
    assert "access log on, keep-alive 75 s" in asked.stdout


def test_workers_get_the_resolved_settings_with_the_real_admin_key(
    tmp_path: Path, uvicorn_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    config = tmp_path / "w.toml"
    config.write_text('[[defaults]]\nkind = "user"\nmetric = "tokens"\nwindow = "day"\nlimit = 7\n')
    result = invoke(
        "--config",
        str(config),
        "--workers",
        "2",
        "--db",
        db,
        "--timezone",
        "Europe/Oslo",
        "--strict-subjects",
        env={"TOKENQUOTA_ADMIN_KEY": ADMIN_KEY},
    )
    assert result.exit_code == 0, result.output
    ((_, kwargs),) = uvicorn_calls
    handed = Settings.model_validate_json(kwargs["settings_json"])
    assert handed.admin_key is not None
    assert handed.admin_key.get_secret_value() == ADMIN_KEY
    assert (handed.db, handed.workers, handed.timezone) == (db, 2, "Europe/Oslo")
    assert handed.strict_subjects is True
    assert handed.default_rules() == [
        {
            "kind": "user",
            "metric": "tokens",
            "window": "day",
            "limit": 7,
            "shadow": False,
            "thresholds": None,
        }
    ]
    assert ADMIN_KEY not in result.stdout
    assert SETTINGS_ENV not in os.environ


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["--port", "70000"], {}, "port"),
        ([], {"TOKENQUOTA_PORT": "eighty"}, "port"),
        (["--workers", "0"], {}, "workers"),
        (["--workers", "2", "--db", "memory://"], {}, "workers"),
        (["--db", "mysql://user:secret@db/quota"], {}, "db"),
        (["--timezone", "Mars/Olympus_Mons"], {}, "timezone"),
        (["--config", "missing.toml"], {}, "config"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_field(
    tmp_path: Path,
    uvicorn_calls: list[tuple[Any, dict[str, Any]]],
    args: list[str],
    env: dict[str, str | None],
    field: str,
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'x.db'}"] if "--db" not in args else []
    result = invoke(*args, *db, env=env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {field}")
    assert "secret" not in result.output
    assert uvicorn_calls == []


def test_a_bad_default_in_the_config_file_is_refused_before_serving(
    tmp_path: Path, uvicorn_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[defaults]]\nkind = "user"\nmetric = "tokens"\nwindow = "fortnight"\nlimit = 5\n'
    )
    result = invoke("--config", str(config), "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: defaults[0]")
    assert uvicorn_calls == []


def test_keys_create_list_revoke_in_process_and_audited(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'keys.db'}"

    def keys(*args: str) -> Any:
        env: dict[str, str | None] = {"TOKENQUOTA_ACTOR": "ops:jo", "TOKENQUOTA_DB": db}
        return CliRunner().invoke(app, ["keys", *args], env=env)

    created = keys("create", "--role", "member", "--subject", "user:alice", "--json")
    assert created.exit_code == 0, created.output
    wire = json.loads(created.stdout)
    assert (wire["role"], wire["subject"]) == ("member", "user:alice")
    assert wire["key"].startswith(f"tq_{wire['id']}_")

    listed = keys("list")
    assert listed.exit_code == 0, listed.output
    assert wire["id"] in listed.stdout
    assert "user:alice" in listed.stdout
    assert wire["key"] not in listed.stdout
    assert "1 of 1 keys shown" in listed.stdout

    assert keys("revoke", wire["id"]).exit_code == 0
    again = keys("revoke", wire["id"])
    assert again.exit_code == 2
    assert again.stderr.startswith("error: id: no live key")
    refused = keys("create", "--role", "member")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "error: subject: a member key is bound to one subject [validation_error]"
    )

    with tokenquota.open(db) as quota:
        assert quota.authenticate(wire["key"]) is None
        entries = quota.audit(subject=f"keys/{wire['id']}").items
    # Oldest first, each naming who ran the command.
    assert [(e.action, e.actor) for e in entries] == [
        ("key.create", "ops:jo"),
        ("key.revoke", "ops:jo"),
    ]


def test_a_worker_s_app_freezes_its_startup_heap_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full collections under load walked the whole startup heap with the GIL held
    (100 ms and more each); serve's apps freeze it while they serve (api/app.py,
    frozen_heap) and give it back at shutdown."""
    settings = Settings(db=f"sqlite:///{tmp_path / 'heap.db'}", spool=str(tmp_path / "s.db"))
    monkeypatch.setenv(SETTINGS_ENV, settings_json(settings))
    with TestClient(app_from_env()) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings)) as client:  # embedded: the heap is the host's
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0
