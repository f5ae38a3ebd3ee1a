"""The step script's calls on a single Redis, below redis-py's command path.

Every enforcing operation is one ``EVALSHA`` of ``step.lua``. Through
``Redis.evalsha`` a call costs the client about 75 us of CPU on the session
machine, while the same bytes sent and read on a connection held by the
caller cost about 22 us (performance-log.md, session 10, branch
``s10-redis``): the rest is redis-py's path around each command (the pool's
lock and bookkeeping on every get and release, the retry wrapper, the
observability attributes, a type check and an encode per argument). A
consume's ``EVALSHA`` is the same few shapes over and over, so its command is
framed here from a head kept per key list and sent on connections this line
keeps for itself.

What redis-py's path did that stays true here: a connection is made with the
client's own settings (host, TLS, password, database, timeouts) by the
client's own connection class; one taken from the idle list is checked first
(a closed socket or unread bytes, after a restart or a proxy cut, is
reconnected, as the pool does); NOSCRIPT loads the script and sends the call
again. What it did that is left out on purpose: retrying a command whose
connection broke after it was sent. The script may have run, and running it
again counts a consume twice; the failure is answered as Redis unreachable
(a 503), and a client with an idempotency key can retry safely.

A cluster client keeps redis-py's path: a call there is routed by slot.
"""

from __future__ import annotations

import os
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def head(keys: list[bytes]) -> bytes:
    """The part of an ``EVALSHA`` frame after the script's digest: the number of
    keys and the keys, in the protocol's bulk strings. Two arguments follow them
    (the spec and the event body); ``frame`` adds those and what comes first."""
    parts = [b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys))]
    parts += [b"$%d\r\n%b\r\n" % (len(key), key) for key in keys]
    return b"".join(parts)


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
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def evalsha(self, script: Any, keys: list[bytes], head: bytes, argv: list[str | bytes]) -> Any:
        """Run ``script`` (redis-py's ``Script``: its ``sha`` is read at each call) with
        ``keys`` (framed as ``head``) and the two arguments ``argv``."""
        spec, body = (a if isinstance(a, bytes) else a.encode() for a in argv)
        tail = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(spec), spec, len(body), body)
        conn = self._take()
        try:
            try:
                reply = self._send(conn, script.sha, len(keys), head, tail)
            except NoScriptError:  # a server restarted, flushed, or failed over
                script.sha = self._client.script_load(self._source)
                reply = self._send(conn, script.sha, len(keys), head, tail)
        except ResponseError:
            self._idle.append(conn)  # an error reply, read whole: the connection is clean
            raise
        except BaseException:
            conn.disconnect()  # cut, timed out or interrupted mid-reply: never reused
            raise
        self._idle.append(conn)
        return reply

    @staticmethod
    def _send(conn: Any, sha: str, nkeys: int, head: bytes, tail: bytes) -> Any:
        frame = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n%b%b" % (
            nkeys + 5,
            len(sha),
            sha.encode(),
            head,
            tail,
        )
        conn.send_packed_command((frame,), check_health=False)
        return conn.read_response()

    def _take(self) -> Any:
        """An idle connection that has nothing pending, else a new one (connected on
        its first send)."""
        if os.getpid() != self._pid:  # a forked child: the parent's sockets are not its own
            self._idle = []
            self._pid = os.getpid()
        idle = self._idle
        while idle:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                break
            try:
                if not conn.can_read():
                    return conn
            except RedisConnectionError:
                pass  # closed by the server or a proxy
            conn.disconnect()
        return self._connection_class(**self._connection_kwargs)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
