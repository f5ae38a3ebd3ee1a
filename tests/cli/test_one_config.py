"""The CLI and ``tokenquota serve`` decide alike from one TOML file (issue 15).

A key made by the CLI must land in the store the server reads, and a
``[[defaults]]`` table must bind the CLI's consume as it binds the service's:
one settings order everywhere (flags > TOKENQUOTA_* > TOML > defaults).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from tests.api.test_serve import (
    COMMAND_TIMEOUT_SECONDS,
    TOKENQUOTA,
    Served,
    StartServe,
    clean_env,
    consume,
    free_port,
    serve,
)
from tokenquota.cli import app
from tokenquota.cli.common import load_settings, opened
from tokenquota.settings import open_quota

__all__ = ["serve"]  # the fixture, imported so this module can start servers too

DAILY_TOKENS = 100


def write_config(path: Path, db: Path, *extra: str) -> Path:
    path.write_text(
        "\n".join(
            [
                f'db = "sqlite:///{db}"',
                *extra,
                "[[defaults]]",
                'kind = "user"',
                'metric = "tokens"',
                'window = "day"',
                f"limit = {DAILY_TOKENS}",
                "",
            ]
        )
    )
    return path


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A CLI command in its own process, as an operator beside the server runs it."""
    return subprocess.run(
        [*TOKENQUOTA, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.slow
def test_cli_and_server_decide_alike_from_one_toml(tmp_path: Path, serve: StartServe) -> None:
    store = tmp_path / "cfg.db"
    config = write_config(tmp_path / "tq.toml", store)
    # The CLI finds the file through the environment, the server through --config.
    env = clean_env(TOKENQUOTA_CONFIG=str(config))

    made = cli("keys", "create", "--role", "service", "--quiet", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert store.exists()
    assert not (tmp_path / "tokenquota.db").exists()  # the default store was never opened

    port = free_port()
    server: Served = serve("--config", str(config), "--port", str(port), port=port)

    first = consume(server.url, key, "user:alice", 60)  # the CLI's key works: not a 401
    assert first.status_code == 200, first.text
    assert first.json()["allowed"] is True

    # The default of the file binds the CLI: 60 + 60 > 100, as the server says.
    cli_denied = cli("consume", "user:alice", "--tokens", "60", cwd=tmp_path, env=env)
    assert cli_denied.returncode == 1, cli_denied.stdout + cli_denied.stderr
    assert "denied" in cli_denied.stdout
    assert consume(server.url, key, "user:alice", 60).status_code == 429

    # What is left is the same number on both sides, and both may spend it.
    left = DAILY_TOKENS - 60
    assert cli("check", "user:alice", "--tokens", str(left), cwd=tmp_path, env=env).returncode == 0
    assert cli("check", "user:alice", "--tokens", str(left + 1), cwd=tmp_path, env=env).returncode
    usage = json.loads(cli("usage", "user:alice", "--json", cwd=tmp_path, env=env).stdout)
    [tokens] = [s for s in usage["limits"] if s["metric"] == "tokens"]
    assert (tokens["limit"], tokens["used"], tokens["source"]) == (DAILY_TOKENS, 60, "default")
    served = httpx.get(
        f"{server.url}/v1/subjects/user:alice/usage",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert served.status_code == 200, served.text
    [served_tokens] = [s for s in served.json()["limits"] if s["metric"] == "tokens"]
    assert served_tokens["remaining"] == tokens["remaining"] == left


# The order itself, in process: flags > TOKENQUOTA_* > TOML > defaults. ------------
def invoke(*args: str, env: dict[str, str | None]) -> Result:
    base: dict[str, str | None] = {
        **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
        "COLUMNS": "250",
        "NO_COLOR": "1",
        "TOKENQUOTA_ACTOR": "tester",
        "TOKENQUOTA_DB": None,
        "TOKENQUOTA_TIMEZONE": None,
        "TOKENQUOTA_REDIS": None,
        "TOKENQUOTA_STRICT_SUBJECTS": None,
        "TOKENQUOTA_CONFIG": None,
    }
    return CliRunner().invoke(app, list(args), env={**base, **env})


def subjects_in(db: Path) -> str:
    result = invoke("subjects", "list", "--db", f"sqlite:///{db}", env={})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    from_file, from_env, from_flag = (tmp_path / f"{n}.db" for n in ("file", "env", "flag"))
    config = str(write_config(tmp_path / "tq.toml", from_file))

    assert invoke("subjects", "put", "user:a", "--config", config, env={}).exit_code == 0
    env: dict[str, str | None] = {
        "TOKENQUOTA_CONFIG": config,
        "TOKENQUOTA_DB": f"sqlite:///{from_env}",
    }
    assert invoke("subjects", "put", "user:b", env=env).exit_code == 0
    flagged = invoke("subjects", "put", "user:c", "--db", f"sqlite:///{from_flag}", env=env)
    assert flagged.exit_code == 0, flagged.output

    assert "user:a" in subjects_in(from_file)
    assert "user:b" in subjects_in(from_env)
    assert "user:c" in subjects_in(from_flag)
    assert "user:b" not in subjects_in(from_file)
    assert "user:c" not in subjects_in(from_env)


def test_the_file_s_defaults_zone_and_strict_subjects_bind_the_cli(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "tq.toml", tmp_path / "q.db", 'timezone = "Asia/Tokyo"', "strict_subjects = true"
    )
    env: dict[str, str | None] = {"TOKENQUOTA_CONFIG": str(config)}
    unknown = invoke("consume", "user:nobody", "--tokens", "1", env=env)
    assert unknown.exit_code == 2, unknown.output  # strict: create the subject first
    assert invoke("subjects", "put", "user:alice", env=env).exit_code == 0
    assert invoke("consume", "user:alice", "--tokens", str(DAILY_TOKENS), env=env).exit_code == 0
    assert invoke("consume", "user:alice", "--tokens", "1", env=env).exit_code == 1
    shown = invoke("usage", "user:alice", env=env)
    assert "JST" in shown.stdout  # resets at the file's zone's midnight
    # An environment variable still wins over the file, as for serve.
    relaxed = invoke(
        "consume", "user:other", "--tokens", "1", env={**env, "TOKENQUOTA_STRICT_SUBJECTS": "0"}
    )
    assert relaxed.exit_code == 0, relaxed.output


def test_a_bad_config_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    missing = invoke("usage", "user:a", "--config", str(tmp_path / "nope.toml"), env={})
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: config")
    typo = tmp_path / "typo.toml"
    typo.write_text('dbb = "sqlite:///x.db"\n')
    wrong = invoke("usage", "user:a", "--config", str(typo), env={})
    assert wrong.exit_code == 2
    assert "dbb" in wrong.stderr
    assert "Traceback" not in wrong.output


def test_a_command_fails_closed_even_when_the_file_says_open(tmp_path: Path) -> None:
    """Nothing a command admits may sit in a spool file that no running process drains."""
    spool = tmp_path / "spool.db"
    config = write_config(
        tmp_path / "tq.toml", tmp_path / "q.db", 'on_store_error = "open"', f'spool = "{spool}"'
    )
    with opened(None, None, config) as quota:
        assert quota.spool is None  # fails closed: no spool, an outage is exit code 2
        assert quota.planner.config_defaults  # while the rest of the file applies
    assert not spool.exists()
    with open_quota(load_settings(config)) as served:  # as serve opens it: fails open
        assert served.spool is not None
