"""Real HTTP servers for tests: uvicorn on a loopback port, with one test's app mounted.

Starting and stopping uvicorn costs more than most API tests (its shutdown
alone waits two ticks of 0.1 s), and hundreds of tests each want a server of
their own. So a uvicorn server here (a ``Host``) outlives the test: each
``LiveServer`` mounts its app on a free host, running the app's own ASGI
lifespan there (startup opens the store, shutdown closes it), and gives the
host back when stopped, after every request to its app has finished. While
no app is mounted a host answers 503, so nothing reaches a test's app after
its test. Every request is still real HTTP over a socket, through uvicorn,
into the app, in the host's event loop, as with a server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
T = TypeVar("T")


class Host:
    """One uvicorn server on its own port and thread, serving whichever app is mounted."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: ASGIApp | None = None
        self.state: dict[str, Any] = {}
        self.active = 0  # requests inside the mounted app; touched only in the host's loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lifespan: _Lifespan | None = None
        config = uvicorn.Config(
            self._serve, log_level="warning", lifespan="on", access_log=False, interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (self.server.started and self.loop is not None):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)

    def mount(self, app: ASGIApp) -> None:
        """Run ``app``'s lifespan startup in this host's loop, then send it every request."""
        lifespan = _Lifespan(app)
        self._call(lifespan.startup(), START_TIMEOUT_SECONDS)
        self._lifespan, self.state, self.app = lifespan, lifespan.state, app

    def unmount(self) -> None:
        """Refuse new requests, wait for those in the app, then run its lifespan shutdown."""
        self._call(self._unmount(), STOP_TIMEOUT_SECONDS)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT_SECONDS)

    async def _unmount(self) -> None:
        self.app = None
        while self.active:
            await asyncio.sleep(0.005)
        # As uvicorn's own shutdown does: no keep-alive connection of this test's
        # clients stays open into the next test's app.
        for connection in list(self.server.server_state.connections):
            connection.shutdown()
        lifespan, self._lifespan, self.state = self._lifespan, None, {}
        if lifespan is not None:
            await lifespan.shutdown()

    def _call(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=timeout)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the host's own: it only learns its loop here
            self.loop = asyncio.get_running_loop()
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        app = self.app
        if app is None:
            await _unavailable(scope, send)
            return
        self.active += 1
        try:
            # A copy per request, as uvicorn gives each request of the app's own server.
            await app({**scope, "state": dict(self.state)}, receive, send)
        finally:
            self.active -= 1


class _Lifespan:
    """The ASGI lifespan protocol, driven as a server drives it, for one app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.task = asyncio.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the test server did not start: {answer.get('message', answer)}")

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        answer = await self.outbox.get()
        assert self.task is not None
        with contextlib.suppress(Exception):  # its failure was reported as the answer
            await self.task
        if answer["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"the test server did not stop: {answer.get('message', answer)}")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await self.app({**scope, "state": self.state}, self.inbox.get, self.outbox.put)
        except BaseException as exc:
            await self.outbox.put({"type": "lifespan.failed", "message": repr(exc)})
            raise


async def _unavailable(scope: Scope, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b"no app is mounted on this test server"})


_free: list[Host] = []
_hosts: list[Host] = []
_lock = threading.Lock()


class LiveServer:
    """``app`` served over real HTTP on a loopback port until ``stop``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        with _lock:
            host = _free.pop() if _free else None
        if host is None:
            host = Host()
            with _lock:
                _hosts.append(host)
        try:
            host.mount(app)
        except BaseException:
            with _lock:
                _free.append(host)  # nothing of this app is left on it
            raise
        self.host: Host | None = host
        self.port = host.port
        self.url = host.url

    def stop(self) -> None:
        host, self.host = self.host, None
        if host is None:
            return
        host.unmount()
        with _lock:
            _free.append(host)


def close_all() -> None:
    """Stop every host (at the end of the run)."""
    with _lock:
        hosts = list(_hosts)
        _hosts.clear()
        _free.clear()
    for host in hosts:
        host.close()
