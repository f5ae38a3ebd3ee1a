"""The product's one version, read from the installed package's metadata.

``pyproject.toml`` is the only place it is written; the service's OpenAPI
document and ``/healthz``, the CLI's ``--version`` and the client's
User-Agent all read it from here, so a release changes one line. It lives in
``wire`` because it travels: a client and a server each say theirs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final


def _installed() -> str:
    try:
        return version("tokenquota")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


VERSION: Final = _installed()
