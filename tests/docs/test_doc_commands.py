"""Every command the docs tell a reader to type, run as the reader would run it.

Each Markdown page (README.md, docs/**/*.md) is one reading session: its
``sh`` blocks run in order in one bash (``set -euo pipefail``), its ``python``
blocks in the same session through the project's Python, in a fresh directory
where ``.venv`` is the project's and ``tokenquota serve`` is already running on
a fresh SQLite store, as after the README's ``make serve``. The only change
made to the text is the port: ``localhost:8000`` becomes the test server's.

A block that must not run here says so, with its reason, on the line above
its fence: ``<!-- not run: needs a PostgreSQL server -->``. Anything else runs,
so a new command in the docs is tested the day it is written, and a page
whose commands fail (a removed flag, a variable never set, a 5xx from the
service) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.test_serve import Served, clean_env, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(
    r"(?P<before>^[^\n]*\n)?^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^[ \t]*```",
    re.M | re.S,
)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>[^>]+?)\s*-->")
SHELL = {"sh", "bash", "shell"}
# uvicorn's access log: '127.0.0.1:5000 - "GET /v1/... HTTP/1.1" 200 OK'
ACCESS = re.compile(r'^(.*"[A-Z]+ (?!/healthz)\S+ HTTP/[\d.]+" (\d{3}).*)$', re.M)
RUN_TIMEOUT_SECONDS = 240


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    not_run: str | None


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        lang = m["lang"]
        if lang not in SHELL and lang != "python":
            continue
        indent = len(m["indent"])
        body = "\n".join(line[indent:] for line in m["body"].splitlines())
        marker = NOT_RUN.search(m["before"] or "")
        line = text.count("\n", 0, m.start("indent")) + 1
        found.append(Block(page, line, lang, body, marker["why"] if marker else None))
    return found


def script(page_blocks: list[Block], port: int) -> str:
    parts = ["set -euo pipefail"]
    for block in page_blocks:
        if block.not_run is not None:
            continue
        body = block.body.replace("localhost:8000", f"localhost:{port}")
        where = f"{block.page.relative_to(ROOT)}:{block.line}"
        parts.append(f"echo '>>> {where}' >&2")
        if block.lang == "python":
            parts.append(
                f".venv/bin/python - <<'TOKENQUOTA_DOC_PYTHON'\n{body}\nTOKENQUOTA_DOC_PYTHON"
            )
        else:
            parts.append(body)
    return "\n".join(parts) + "\n"


RUNNABLE = [p for p in PAGES if any(b.not_run is None for b in blocks(p))]


def test_every_block_that_is_not_run_says_why() -> None:
    skipped = [b for p in PAGES for b in blocks(p) if b.not_run is not None]
    assert all(len(b.not_run or "") >= 10 for b in skipped), skipped


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_commands_of_a_page_run(page: Path, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    port = free_port()
    env = clean_env()  # no tokenquota on PATH: a page must say how to get it there
    served = Served(tmp_path, ["--port", str(port), "--access-log"], port, env)
    try:
        served.wait_healthy()
        run = subprocess.run(
            ["bash", "-c", script(blocks(page), port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_SECONDS,
        )
    finally:
        served.kill()
    log = served.output()
    assert run.returncode == 0, f"{run.stderr[-4000:]}\n--- stdout\n{run.stdout[-2000:]}"
    assert "Traceback" not in log, log[-4000:]
    # Every request the page makes succeeds, but for the denials it shows on purpose.
    statuses = ACCESS.findall(log)
    failed = [line for line, status in statuses if not status.startswith("2") and status != "429"]
    assert not failed, "\n".join(failed)
