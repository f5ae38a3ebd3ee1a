"""``serve --workers N``: uvicorn's workers, each listening on a socket of its own.

uvicorn's supervisor (``Multiprocess``) hands every worker the same listening
socket, and a connection goes to whichever worker's event loop wakes first.
Kept-alive connections stay where they were accepted, so a burst of them (a
fleet reconnecting; the bench's 64) could all land on one worker while the
other idled (docs/performance-log.md, "The HTTP rows, profiled per backend").
Here each worker gets its own socket, all bound to the same address with
``SO_REUSEPORT``, and the kernel spreads new connections over them by a hash
of their addresses: which worker serves a connection no longer depends on
which one the scheduler ran.

The supervisor is uvicorn's own (signals, health pings, restarting a dead
worker, graceful shutdown); only the socket each worker is given differs.
The parent keeps every socket open for its whole life, so a worker that dies
or is restarted leaves its socket listening: the connections the kernel
queued on it wait for the replacement instead of being reset.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Final

import uvicorn.config
from uvicorn import Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

# The exit code of a worker that failed before serving (recent uvicorn): restarting
# it would fail the same way, so the supervisor stops instead. None on older uvicorn.
STARTUP_FAILURE: Final[int | None] = getattr(uvicorn.config, "STARTUP_FAILURE", None)

logger = logging.getLogger("uvicorn.error")  # where uvicorn's supervisor writes

# Where SO_REUSEPORT spreads connections over a port's sockets (Linux 3.9 and later).
# Elsewhere it is missing (Windows) or gives every connection to one socket (macOS,
# the BSDs), and the workers share one socket, as uvicorn's own supervisor does.
SPREADS: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port(first: socket.socket, count: int, backlog: int) -> list[socket.socket]:
    """``first`` and ``count - 1`` more listening sockets on its address, one group.

    ``first`` must be bound without ``SO_REUSEPORT`` (so that any other socket
    on the port, a ``SO_REUSEPORT`` one of another server included, made its
    bind fail) and not yet listening: the option is set on it here, before it
    listens, so the port is never free in between and no other process can join
    the group. The kernel then hashes each new connection to one of the sockets.
    Where it would not (``SPREADS``), ``first`` listening, ``count`` times.
    """
    if not SPREADS:
        first.listen(backlog)
        return [first] * count
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.listen(backlog)
    sockets = [first]
    try:
        while len(sockets) < count:
            sockets.append(join_port(first, backlog))
    except OSError:
        for sock in sockets[1:]:
            sock.close()
        raise
    return sockets


def join_port(first: socket.socket, backlog: int) -> socket.socket:
    """Another listening socket in ``first``'s ``SO_REUSEPORT`` group."""
    sock = socket.socket(first.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(first.getsockname())
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class Workers(Multiprocess):
    """uvicorn's ``Multiprocess``, worker ``i`` always on ``sockets[i]``
    (the same socket ``N`` times where ``SPREADS`` is false).

    Every place uvicorn starts a worker (at start, a dead one's replacement, a
    restart on SIGHUP, one more on SIGTTIN) is overridden only to hand it its
    own socket; SIGTTOU closes the socket of the worker it stops, which would
    otherwise keep receiving connections nobody accepts.
    """

    def __init__(self, config: Config, sockets: list[socket.socket], backlog: int) -> None:
        super().__init__(config, sockets)
        self.processes_num = len(sockets)
        self.backlog = backlog

    def spawn(self, index: int) -> Process:
        process = Process(self.config, [self.sockets[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self.spawn(index) for index in range(len(self.sockets))]

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: killed; dead: a no-op
            process.join()
            if STARTUP_FAILURE is not None and process.exitcode == STARTUP_FAILURE:
                # It failed before serving (the app's startup): every restart would too.
                logger.error(f"Child process [{process.pid}] failed to start, stopping.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[index] = self.spawn(index)

    def restart_all(self) -> None:
        """SIGHUP: each worker replaced in turn, the new one on the old one's socket."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self.spawn(index)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                logger.error(f"New worker [{new.pid}] not ready in time; restart stopped.")
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def handle_ttin(self) -> None:
        try:
            added = join_port(self.sockets[0], self.backlog) if SPREADS else self.sockets[0]
        except OSError as exc:
            logger.error(f"SIGTTIN: no socket for another worker: {exc}")
            return
        self.sockets.append(added)
        self.processes_num += 1
        self.processes.append(self.spawn(len(self.sockets) - 1))

    def handle_ttou(self) -> None:
        if self.processes_num <= 1:
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        stopped = self.sockets.pop()
        if SPREADS:  # else it is the one socket every worker shares
            stopped.close()
