"""A real webhook receiver for tests: an HTTP server on a loopback port, in a thread.

It answers each POST with the next status of its script (then ``default``),
optionally after a pause, and keeps what it got: the raw body and the headers,
so a test checks the signature over the bytes as sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.replicas import free_port


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


class Receiver:
    def __init__(
        self,
        script: list[int] | None = None,
        *,
        default: int = 200,
        delay: float = 0.0,
        port: int | None = None,
    ) -> None:
        self.script = list(script or [])
        self.default = default
        self.delay = delay
        self.got: list[Received] = []
        self.arrivals = 0  # requests begun (counted before the pause)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.arrivals += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.got.append(Received(body, headers, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads ``got``

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.got)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Until ``count`` requests arrived (a bound for a stuck test, not a speed assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"the receiver got {len(self.received())} requests, not {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_url() -> str:
    """A URL on a port nobody listens on: every delivery there fails to connect."""
    return f"http://127.0.0.1:{free_port()}/hook"
