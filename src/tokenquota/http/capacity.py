"""Who may use the service's threads: decisions never queue behind reads.

Store calls block, so they run on threads, and threads are a bounded pool.
With one pool for everything, a member running forty slow history queries and
ten exports held every thread, and another tenant's consume waited for one
(issue 11, item 8). So each kind of work draws from its own capacity:

- decisions (check, consume, reservations and leases, the compatibility
  surfaces' record calls): ``Settings.decision_threads``;
- reads (usage, history, the ledger and its exports, audit, lists):
  ``Settings.read_threads``, including each batch an export streams;
- everything else, authentication included: AnyIO's default limiter
  (``Settings.threads``), which neither of the above ever borrows from.

Heavy reads (history and the ledger) are also bounded per API key
(``Settings.heavy_reads_per_key``, held until the response is fully sent), so
one key cannot take all read capacity either: the one over the bound is a 429
``too_many_requests`` at once, instead of a wait. docs/architecture.md says why.

A lane is a thread pool of its own (``Threads``), entered with one
``run_in_executor``: AnyIO's ``to_thread.run_sync`` also yields to the loop
before and after the call (its checkpoints), and each yield resumes the
request's whole stack of middleware frames; on the decision path that was a
tenth of a request's time. As with AnyIO, a call sees the request's context
variables, and one that has started runs to its end even if the request is
cancelled meanwhile (one still waiting for a thread is dropped).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from fastapi import Depends

from tokenquota.http.auth import Caller

Lane = Literal["decisions", "reads"]
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
# Told how long each call took on a lane's thread and what it raised (http.metrics).
Observer = Callable[[float, BaseException | None], None]

RETRY_AFTER_SECONDS = 1


class Threads:
    """A bounded pool of threads that only one kind of work uses (a lane)."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.total_tokens = threads
        self._pool: ThreadPoolExecutor | None = None  # made on first use, after a close too
        self._lock = threading.Lock()
        self._running = 0
        self.observe: Observer | None = None

    @property
    def borrowed_tokens(self) -> int:
        """Calls running in the lane's threads now (as an AnyIO limiter would say)."""
        return self._running

    async def run(self, call: Callable[[], R]) -> R:
        """``call()`` on a thread of this lane, waiting for one when all are busy."""
        pool = self._pool or self._open()
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, self._enter, context, call)

    def _open(self) -> ThreadPoolExecutor:
        # Threads start one by one as calls need them, up to the bound.
        self._pool = ThreadPoolExecutor(self.total_tokens, f"tokenquota-{self.name}")
        return self._pool

    def _enter(self, context: contextvars.Context, call: Callable[[], R]) -> R:
        with self._lock:
            self._running += 1
        started = time.perf_counter()
        raised: BaseException | None = None
        try:
            return context.run(call)
        except BaseException as exc:
            raised = exc
            raise
        finally:
            with self._lock:
                self._running -= 1
            if self.observe is not None:
                self.observe(time.perf_counter() - started, raised)

    def close(self) -> None:
        """After the last request: let running calls end, drop any never started."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Capacity:
    """One app's lanes; created with the app, used only on its event loop."""

    decisions: Threads
    reads: Threads
    heavy_per_key: int
    heavy: Counter[str] = field(default_factory=Counter)  # in-flight heavy reads per key id

    @classmethod
    def of(cls, decisions: int, reads: int, heavy_per_key: int) -> Capacity:
        return cls(Threads("decisions", decisions), Threads("reads", reads), heavy_per_key)

    def lane(self, lane: Lane) -> Threads:
        return self.decisions if lane == "decisions" else self.reads

    def close(self) -> None:
        self.decisions.close()
        self.reads.close()


class TooManyHeavyReads(Exception):
    """A key already has its share of heavy reads in flight; rendered as a 429."""

    def __init__(self, bound: int) -> None:
        super().__init__(
            f"this key already has {bound} history or ledger reads in flight; "
            "retry when one has finished"
        )
        self.bound = bound


# The capacity of the app serving the current request. Set per request by the
# app's entry middleware (``serving``), not module state, so several apps in one
# process keep their own.
_CURRENT: ContextVar[Capacity] = ContextVar("tokenquota_capacity")


def serving(capacity: Capacity) -> Token[Capacity]:
    """Make ``capacity`` the lanes of the request now served; ``done`` undoes it."""
    return _CURRENT.set(capacity)


def done(token: Token[Capacity]) -> None:
    _CURRENT.reset(token)


def runs_on(
    lane: Lane,
) -> Callable[[Callable[P, R]], Callable[P, Coroutine[Any, Any, R]]]:
    """Run a plain ``def`` handler on ``lane``'s threads instead of the shared pool.

    FastAPI would run it with AnyIO's default limiter; declared async here, it
    hands the same call to a thread of its own lane, in one hop. The signature FastAPI reads
    is the handler's (``functools.wraps``), so parameters and OpenAPI are unchanged.
    """

    def decorate(handler: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(handler)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            return await _CURRENT.get().lane(lane).run(functools.partial(handler, *args, **kwargs))

        return run

    return decorate


async def iterate_on(lane: Lane, chunks: Iterator[T]) -> AsyncIterator[T]:
    """Each step of a streamed response on ``lane``'s threads (Starlette would use the default)."""
    threads = _CURRENT.get().lane(lane)
    while True:
        step = await threads.run(functools.partial(_step, chunks))
        if not step:
            return
        yield step[0]


def _step(chunks: Iterator[T]) -> tuple[T] | tuple[()]:
    # StopIteration cannot cross a thread boundary into a coroutine: say "no more" instead.
    for chunk in chunks:
        return (chunk,)
    return ()


async def heavy_read(caller: Caller) -> AsyncIterator[None]:
    """One of the caller's bounded heavy reads, held while the body runs (or a 429).

    Counted on the event loop, before any thread is taken: the 429 never waits.
    Routes take it as the ``HeavyRead`` dependency; pages outside FastAPI's
    dependencies (the dashboard) as ``one_heavy_read``.
    """
    capacity = _CURRENT.get()
    if capacity.heavy[caller.id] >= capacity.heavy_per_key:
        raise TooManyHeavyReads(capacity.heavy_per_key)
    capacity.heavy[caller.id] += 1
    try:
        yield
    finally:
        capacity.heavy[caller.id] -= 1
        if not capacity.heavy[caller.id]:
            del capacity.heavy[caller.id]


# scope="request": released after the response is sent, an export's last batch included.
HeavyRead = Annotated[None, Depends(heavy_read, scope="request")]
one_heavy_read = asynccontextmanager(heavy_read)
