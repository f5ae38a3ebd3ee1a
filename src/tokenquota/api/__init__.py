"""The HTTP service: ``create_app(settings)`` in ``tokenquota.api.app``.

The package does not import the app when imported: the routes and schemas
below it load without building FastAPI's whole application (and its
compatibility surfaces). ``from tokenquota.api import create_app`` and the
factory path ``tokenquota.api:app_from_env`` keep working; they load
``tokenquota.api.app`` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenquota.api.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tokenquota.api.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
