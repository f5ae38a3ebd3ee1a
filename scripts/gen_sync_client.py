"""Generate the blocking ``Client`` (``_sync.py``) from ``AsyncClient`` (``_async.py``).

Two hand-kept copies of one client drift: a method added to one is forgotten in
the other. So ``_async.py`` is the only source and this script derives the other:

1. unasync drops ``async`` / ``await`` and renames tokens (``REPLACEMENTS``); what
   is more than a rename lives in ``client/_twins.py`` as a pair of names.
2. An alias the renaming turned into ``name = name`` (``aclose = close``) is dropped,
   and prose in docstrings and comments gets the same renames.
3. ruff turns ``for x in xs: yield x`` (async generators cannot ``yield from``)
   into ``yield from`` and formats the result, so the output passes ``make lint``.

    python scripts/gen_sync_client.py          # write src/tokenquota/client/_sync.py
    python scripts/gen_sync_client.py --check  # exit 1 when _sync.py is not what it would write
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src/tokenquota/client/_async.py"
TARGET = ROOT / "src/tokenquota/client/_sync.py"

# Besides unasync's own (__aenter__, asynccontextmanager, AsyncIterator...).
REPLACEMENTS = {
    "AsyncClient": "Client",  # ours and httpx's
    "AsyncBaseTransport": "BaseTransport",
    "AsyncHold": "Hold",
    "aclose": "close",
    "aread": "read",
    "aiter_text": "iter_text",
    "shielded": "unshielded",
}

HEADER = '''\
# Generated from _async.py by scripts/gen_sync_client.py: do not edit by hand.
# Change _async.py, then run `make client` (`make lint` fails while this file is stale).
"""``Client``: the blocking twin of ``AsyncClient``, method for method."""
'''

_MODULE_DOCSTRING = re.compile(r'\A"""(?:.|\n)*?"""\n')
_SELF_ALIAS = re.compile(r"^[ \t]*(\w+) = \1\n(?:[ \t]*\n)?", re.MULTILINE)
_PROSE = [
    (re.compile(r"\basync (with|for)\b"), r"\1"),
    (re.compile(r"\bawait "), ""),
    *((re.compile(rf"\b{old}\b"), new) for old, new in REPLACEMENTS.items()),
]


def _ruff(args: list[str], source: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"ruff {' '.join(args)} failed on the generated client:\n{done.stderr}")
    return done.stdout


def generate() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "_async.py"
        source.write_text(SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
        rule = unasync.Rule("/_async.py", "/_sync.py", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(source)], rules=[rule])
        text = (Path(tmp) / "_sync.py").read_text(encoding="utf-8")
    text = _MODULE_DOCSTRING.sub("", text, count=1)
    text = _SELF_ALIAS.sub("", text)
    # Code was renamed token by token above; what is left to rename is prose.
    for pattern, new in _PROSE:
        text = pattern.sub(new, text)
    text = HEADER + text
    text = _ruff(["check", "--fix", "--unsafe-fixes", "--select", "UP028", "--quiet"], text)
    return _ruff(["format"], text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    check = parser.parse_args().check
    wanted = generate()
    if not check:
        TARGET.write_text(wanted, encoding="utf-8")
        return 0
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if current == wanted:
        return 0
    relative = str(TARGET.relative_to(ROOT))
    sys.stdout.writelines(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            f"{relative} (on disk)",
            f"{relative} (generated from _async.py)",
        )
    )
    print(f"\n{relative} is stale: run `make client`.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
