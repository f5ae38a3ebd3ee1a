"""The step script's calls on a single Redis, below redis-py's command path.

Every enforcing operation is one ``EVALSHA`` of ``step.lua``. Through
``Redis.evalsha`` a call costs the client about 75 us of CPU on the session
machine, while the same bytes sent and read on a connection held by the
caller cost about 22 us (performance-log.md, session 10, branch
``s10-redis``): the rest is redis-py's path around each command (the pool's
lock and bookkeeping on every get and release, the retry wrapper, the
observability attributes, a type check and an encode per argument). A
consume's ``EVALSHA`` is the same few shapes over and over, so its command is
framed here from a head kept per key list, sent on sockets this line keeps
for itself and read with hiredis's reader.

What redis-py's path did that stays true here: a connection is made with the
client's own settings (host, TLS, password, database, timeouts) by the
client's own connection class (which also says hello, authenticates and
selects the database; then only its socket is used); one taken from the
idle list is polled first (a closed socket or unread bytes, after a restart
or a proxy cut, is replaced, as the pool does); an error reply is redis-py's
``ResponseError``, NOSCRIPT its ``NoScriptError``, which loads the script
and sends the call again; a socket error or timeout is redis-py's
``ConnectionError`` or ``TimeoutError``. What it did that is left out on
purpose: retrying a command whose connection broke after it was sent. The
script may have run, and running it again counts a consume twice; the
failure is answered as Redis unreachable (a 503), and a client with an
idempotency key can retry safely.

A cluster client keeps redis-py's path: a call there is routed by slot.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

READ_SIZE = 65_536  # one recv: a step's reply is a few hundred bytes
STARTS_KEPT = 64  # frame starts kept: one per number of keys a step names (and digest)


def head(keys: list[bytes]) -> bytes:
    """The part of an ``EVALSHA`` frame after the script's digest: the number of
    keys and the keys, in the protocol's bulk strings. Two arguments follow them
    (the spec and the event body); ``Line`` adds those and what comes first."""
    parts = [b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys))]
    parts += [b"$%d\r\n%b\r\n" % (len(key), key) for key in keys]
    return b"".join(parts)


def kernel_timeouts(sock: socket.socket) -> None:
    """Give a plain TCP or Unix socket's timeout to the kernel (SO_RCVTIMEO and
    SO_SNDTIMEO) and make it blocking in Python's eyes.

    With a timeout set, Python polls the socket before every send and receive
    and reads the clock around it: two system calls more a step, about 3 us of
    the caller's CPU (performance-log.md, session 11). The kernel's timeouts
    keep the same bound: a send or receive that waits longer fails with EAGAIN,
    which ``Wire.call`` answers as redis-py's ``TimeoutError``. Only on Linux,
    where the option is a ``struct timeval``, and not for TLS, whose reads
    need Python's own timeout handling.
    """
    timeout = sock.gettimeout()
    # (0 is a non-blocking socket, and a zero timeval would mean "wait forever")
    if not timeout or not sys.platform.startswith("linux") or type(sock) is not socket.socket:
        return
    seconds = int(timeout)
    micros = max(int((timeout - seconds) * 1_000_000), 0 if seconds else 1)
    value = struct.pack("ll", seconds, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


class Wire:
    """One connection of the line: redis-py's connection (made, said hello on and
    closed by redis-py), its socket, a reader of replies and a poller."""

    __slots__ = ("buffer", "conn", "poller", "reader", "sock")

    def __init__(self, conn: Any) -> None:
        conn.connect()
        self.conn = conn
        self.sock: socket.socket = conn._sock
        kernel_timeouts(self.sock)
        # Text decoded by the reader, in C: a step's reply is all text (Reply.parse).
        self.reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self.buffer = bytearray(READ_SIZE)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)

    def idle_and_open(self) -> bool:
        """Nothing to read: an idle socket that can be read holds the end of the
        stream (the server or a proxy closed it) or bytes nobody asked for."""
        return not self.poller.poll(0)

    def call(self, frame: list[bytes]) -> Any:
        """Send ``frame`` (its parts, joined: one write) and read the reply.

        (``socket.sendmsg`` of the parts, which saves the join's copy, measured
        slower: 15.3 against 14.5 us a call, session 11.)"""
        sock, reader, buffer = self.sock, self.reader, self.buffer
        try:
            sock.sendall(b"".join(frame))
            while (reply := reader.gets()) is False:
                size = sock.recv_into(buffer)
                if not size:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # any buffer, as redis-py
        except (TimeoutError, BlockingIOError) as exc:  # Python's timeout; the kernel's
            raise RedisTimeoutError(f"Timeout talking to Redis: {exc}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error talking to Redis: {exc}") from exc
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                raise NoScriptError(str(reply))
            raise reply
        return reply

    def close(self) -> None:
        self.conn.disconnect()


class Line:
    """``EVALSHA`` of one script with two arguments, on connections of its own.

    A connection is used by one thread at a time: taken from the idle list
    (``list.pop`` and ``append`` are atomic) or made, and put back once its
    reply is read whole. Any failure in between drops it.
    """

    def __init__(self, client: Any, source: str) -> None:
        pool = client.connection_pool
        self._client = client
        self._source = source
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        self._idle: list[Wire] = []
        self._pid = os.getpid()
        self._closed = False
        self._starts: dict[tuple[str, int], bytes] = {}

    def evalsha(self, script: Any, keys: list[bytes], head: bytes, argv: list[str | bytes]) -> Any:
        """Run ``script`` (redis-py's ``Script``: its ``sha`` is read at each call) with
        ``keys`` (framed as ``head``) and the two arguments ``argv``."""
        spec, body = argv
        if not isinstance(spec, bytes):
            spec = spec.encode()
        if not isinstance(body, bytes):
            body = body.encode()
        tail = [b"$%d\r\n" % len(spec), spec, b"\r\n$%d\r\n" % len(body), body, b"\r\n"]
        wire = self._take()
        try:
            try:
                reply = wire.call([self._start(script.sha, len(keys)), head, *tail])
            except NoScriptError:  # a server restarted, flushed, or failed over
                script.sha = self._client.script_load(self._source)
                reply = wire.call([self._start(script.sha, len(keys)), head, *tail])
        except ResponseError:
            self._put_back(wire)  # an error reply, read whole: the connection is clean
            raise
        except BaseException:
            wire.close()  # cut, timed out or interrupted mid-reply: never reused
            raise
        self._put_back(wire)
        return reply

    def _put_back(self, wire: Wire) -> None:
        self._idle.append(wire)
        if self._closed:  # closed while this call ran: close() may have missed it
            self.close()

    def _start(self, sha: str, nkeys: int) -> bytes:
        """The frame's first part (its length, the command and the digest), made once
        per digest and number of keys."""
        found = self._starts.get((sha, nkeys))
        if found is None:
            if len(self._starts) >= STARTS_KEPT:
                self._starts.clear()
            found = self._starts[sha, nkeys] = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (
                nkeys + 5,
                len(sha),
                sha.encode(),
            )
        return found

    def _take(self) -> Wire:
        """An idle connection that has nothing pending, else a new one."""
        if os.getpid() != self._pid:  # a forked child: the parent's sockets are not its own
            self._idle = []
            self._pid = os.getpid()
        idle = self._idle
        while idle:
            try:
                wire = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if wire.idle_and_open():
                return wire
            wire.close()
        return Wire(self._connection_class(**self._connection_kwargs))

    def close(self) -> None:
        """Close every idle connection; one in use is closed when its call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()
