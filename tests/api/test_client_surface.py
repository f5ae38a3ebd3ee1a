"""The embedded ``Quota``, ``Client`` and ``AsyncClient`` offer one set of methods.

Code moves between the library and the service by changing one constructor, so
a method or argument added to one of the three and not the others is drift, and
fails here. The differences that are meant are listed below, each with its
reason; a new one is a decision to write down, not a test to loosen.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenquota import AsyncClient, Client, Quota

ROOT = Path(__file__).resolve().parents[2]

# Methods of the embedded library that the clients do not have.
QUOTA_ONLY: dict[str, str] = {
    "ancestors": "no route answers a subject's ancestors; get_subject has its parents",
    "authenticate": "checking a presented key is the server's job; a client holds one",
    "commit_usage": "the gateway's commit (model and tags on the event) runs in the server",
    "drain": "the outage spool belongs to the process running the engine",
    "ledger_lag": "the Redis mover runs in the engine's process; /metrics exposes its lag",
    "rebuild": "rebuilding counters from the ledger is an operator command",
    "resource_quotas": "no route lists resource quotas; get_resource_quota reads one",
}

# Webhooks are managed over the service (or the CLI, engine/webhooks.py): not on Quota.
WEBHOOKS = "webhooks belong to the service: its server key signs and its worker delivers"

# Methods of both clients that the embedded library does not have.
CLIENT_ONLY: dict[str, str] = {
    "export_events": "the streamed CSV / JSON lines export is an HTTP answer",
    "create_webhook": WEBHOOKS,
    "webhooks": WEBHOOKS,
    "get_webhook": WEBHOOKS,
    "webhook_secret": WEBHOOKS,
    "set_webhook_enabled": WEBHOOKS,
    "delete_webhook": WEBHOOKS,
    "deliveries": WEBHOOKS,
    "get_delivery": WEBHOOKS,
    "redeliver": WEBHOOKS,
    "set_webhook_secret": WEBHOOKS,
    "alerts": "a subject's alert events are read from the service's webhook tables",
}

# Methods of AsyncClient alone.
ASYNC_ONLY: dict[str, str] = {
    "aclose": "the asyncio spelling of close, as httpx.AsyncClient has it",
}

# Library arguments the clients leave out, in every method that has them.
QUOTA_ONLY_PARAMETERS: dict[str, str] = {
    "actor": "the server records the calling key as the actor in the audit log",
}

# AsyncClient methods that are used without ``await``: an async iterator or an
# ``async with`` context manager; every other one is a coroutine function.
NOT_AWAITED = {"export_events", "reservation", "lease"}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: getattr(cls, name)
        for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name))
    }


Shape = list[tuple[str, inspect._ParameterKind, object]]


def shape(method: Callable[..., Any], drop: set[str] | frozenset[str] = frozenset()) -> Shape:
    """Parameter names, kinds and defaults: what a caller's code depends on."""
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(method).parameters.values()
        if p.name not in drop
    ]


def test_the_clients_have_the_library_s_methods() -> None:
    quota, client = set(public_methods(Quota)), set(public_methods(Client))
    assert quota - client == set(QUOTA_ONLY), "a library method the clients lack (or allow)"
    assert client - quota == set(CLIENT_ONLY), "a client method the library lacks (or allow)"


def test_the_async_client_has_the_sync_client_s_methods() -> None:
    sync, async_ = set(public_methods(Client)), set(public_methods(AsyncClient))
    assert async_ - sync == set(ASYNC_ONLY)
    assert sync - async_ == set()


@pytest.mark.parametrize("name", sorted(set(public_methods(Quota)) & set(public_methods(Client))))
def test_a_shared_method_takes_the_same_arguments(name: str) -> None:
    library = shape(getattr(Quota, name), drop=set(QUOTA_ONLY_PARAMETERS))
    assert shape(getattr(Client, name)) == library
    assert shape(getattr(AsyncClient, name)) == library


@pytest.mark.parametrize("name", sorted(CLIENT_ONLY))
def test_a_client_only_method_is_the_same_in_both_clients(name: str) -> None:
    assert shape(getattr(AsyncClient, name)) == shape(getattr(Client, name))


@pytest.mark.parametrize("name", sorted(set(public_methods(AsyncClient)) - NOT_AWAITED))
def test_async_client_methods_are_awaited(name: str) -> None:
    method = getattr(AsyncClient, name)
    assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def test_the_allowlists_name_real_differences() -> None:
    """An entry left behind after the difference is gone would hide the next one."""
    quota = public_methods(Quota)
    assert set(QUOTA_ONLY) <= set(quota)
    assert set(CLIENT_ONLY) <= set(public_methods(Client))
    assert set(ASYNC_ONLY) <= set(public_methods(AsyncClient))
    assert NOT_AWAITED.issubset(public_methods(AsyncClient))
    for parameter in QUOTA_ONLY_PARAMETERS:
        assert any(parameter in inspect.signature(m).parameters for m in quota.values())


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    """``_sync.py`` is what scripts/gen_sync_client.py makes of ``_async.py`` (make client)."""
    done = subprocess.run(
        [sys.executable, "scripts/gen_sync_client.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
