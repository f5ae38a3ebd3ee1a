"""``tokenquota serve --upstream NAME=URL`` and ``[[upstreams]]``/``[[prices]]`` in the TOML file.

A real ``serve`` process (with two workers, so the settings, the upstream's key
included, travel to the workers as they do in production) forwards to the
test upstream with the key from the file and the URL from the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from tests.api.test_serve import Served as ServeProcess
from tests.api.test_serve import StartServe, clean_env, free_port
from tests.gateway.conftest import Served
from tests.gateway.test_sdk import MESSAGES
from tokenquota.cli import app
from tokenquota.settings import Settings

pytestmark = pytest.mark.slow
ADMIN = "serve-upstreams-admin-key-0123456789abcdef"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServe]:
    """``tokenquota serve ARGS``, healthy on return; killed after (workers included)."""
    started: list[ServeProcess] = []

    def start(*args: str, port: int, env: dict[str, str]) -> ServeProcess:
        process = ServeProcess(tmp_path, list(args), port, env)
        started.append(process)
        process.wait_healthy()
        return process

    yield start
    for process in started:
        process.kill()


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "tq.toml"
    path.write_text(
        f"""
db = "sqlite:///{tmp_path / "gw.db"}"

[[upstreams]]
name = "local"
url = "{url}"
api_key = "sk-from-the-file"
models = ["gpt-4o"]

[[prices]]
model = "gpt-4o"
input_per_million = "2.5"
output_per_million = "10"
version = "v7"
"""
    )
    return path


def test_the_file_and_the_flag_make_one_upstream(
    tmp_path: Path,
    serve: StartServe,
    serve_upstream: Callable[..., Served],
) -> None:
    served = serve_upstream(api_key="sk-from-the-file")
    path = config(tmp_path, "http://127.0.0.1:9/v1")  # the flag replaces this URL
    port = free_port()
    server = serve(
        "--config",
        str(path),
        "--port",
        str(port),
        "--workers",
        "2",
        "--upstream",
        f"local={served.url}",
        port=port,
        env=clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN),
    )
    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=ADMIN, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=2, user="user:alice"
        )
    assert answer.usage is not None
    assert served.upstream.requests[-1].headers["authorization"] == "Bearer sk-from-the-file"
    assert f"gateway: {server.url}/openai/v1 -> upstream local at {served.url}" in server.output()


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("local", "expected NAME=URL"),
        ("=http://x/v1", "expected NAME=URL"),
        ("local=ftp://x", "upstream.url"),
        ("bad name=http://x/v1", "upstream.name"),
    ],
)
def test_a_bad_upstream_flag_is_one_line_and_exit_2(tmp_path: Path, flag: str, said: str) -> None:
    result = CliRunner().invoke(
        app,
        ["serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--upstream", flag],
        env=clean_env(),
    )
    assert result.exit_code == 2, result.output
    assert said in result.output


def test_prices_must_be_exact_to_three_places(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[prices]]\nmodel = "m"\ninput_per_million = "0.0001"\noutput_per_million = "1"\n'
    )
    with pytest.raises(ValueError, match="decimal"):
        Settings.load(path)
