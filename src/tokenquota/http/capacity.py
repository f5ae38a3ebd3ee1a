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

A lane is a few threads of its own fed from one queue (``Threads``), entered
with one call: AnyIO's ``to_thread.run_sync`` also yields to the loop before and
after the call (its checkpoints), and each yield resumes the request's whole
stack of middleware frames; on the decision path that was a tenth of a
request's time. It is not a ``ThreadPoolExecutor`` either: under load the event
loop shares the GIL with up to ``decision_threads`` threads, and the executor
made each call cost the loop a semaphore (a lock held by every thread that
finishes a call: the loop blocked on it in 17 % of a profile's GIL samples), a
``concurrent.futures.Future`` with a lock of its own, and one wake of the loop
per finished call. Here the loop only puts the call on a ``SimpleQueue``, and
the threads hand finished calls back in batches: the first to finish while no
hand-back is pending asks the loop for one (``call_soon_threadsafe``), and
every call finished before the loop gets to it is answered in that same turn
(docs/performance-log.md). As with AnyIO, a call sees the request's context
variables, and one that has started runs to its end even if the request is
cancelled meanwhile (one still waiting for a thread is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
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


class Outbox:
    """Calls finished on a lane's threads, handed back to one event loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.finished: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self.pending = False  # a hand-back is scheduled and has not started yet

    def post(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """From a lane's thread: ``value`` for ``future`` (an exception when not ``ok``).

        Appended first, the flag read after: the loop clears the flag before it
        empties the deque, so an answer that finds the flag set is in the deque
        before that emptying begins and is handed back by it. Two threads both
        finding it clear ask twice; the second hand-back finds nothing to do.
        """
        self.finished.append((future, ok, value))
        if not self.pending:
            self.pending = True
            # A closed loop has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.hand_back)

    def hand_back(self) -> None:
        """On the loop: answer every call finished so far."""
        self.pending = False
        finished = self.finished
        while finished:
            future, ok, value = finished.popleft()
            if future.done():  # the request was cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            elif value is None:  # dropped before it started (``Threads.close``)
                future.cancel()
            elif isinstance(value, StopIteration):  # which a future refuses to hold
                future.set_exception(RuntimeError(f"a lane's call raised {value!r}"))
            else:
                future.set_exception(value)


@dataclass(slots=True)  # not frozen: a frozen one's __init__ costs a call a field
class Work:
    """One call waiting for a lane's thread."""

    call: Callable[[], Any]
    context: contextvars.Context
    future: asyncio.Future[Any]
    outbox: Outbox


class Threads:
    """A bounded number of threads that only one kind of work uses (a lane)."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.total_tokens = threads
        self.observe: Observer | None = None
        self._work: SimpleQueue[Work | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        # One entry per thread that will take a call no ``run`` has claimed yet
        # (appended by the threads, popped by ``run``: both atomic).
        self._idle: list[None] = []
        self._running = 0  # changed under _lock by the threads; read anywhere
        self._lock = threading.Lock()
        self._outbox: Outbox | None = None

    @property
    def borrowed_tokens(self) -> int:
        """Calls running in the lane's threads now (as an AnyIO limiter would say)."""
        return self._running

    async def run(self, call: Callable[[], R]) -> R:
        """``call()`` on a thread of this lane, waiting for one when all are busy."""
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        if outbox is None or outbox.loop is not loop:
            outbox = self._outbox = Outbox(loop)
        future: asyncio.Future[R] = loop.create_future()
        self._work.put(Work(call, contextvars.copy_context(), future, outbox))
        # Each call claims a thread that will take it: a waiting one, else a new one,
        # up to the bound. Below the bound every call has a thread of its own to
        # come; at it, calls wait in the queue for the next thread to be free.
        try:
            self._idle.pop()
        except IndexError:
            if len(self._threads) < self.total_tokens:
                self._start()
        return await future

    def _start(self) -> None:
        thread = threading.Thread(
            target=self._serve,
            args=(self._work, self._idle),
            name=f"tokenquota-{self.name}_{len(self._threads)}",
            daemon=True,  # close() is what waits for started calls, at the app's shutdown
        )
        self._threads.append(thread)
        thread.start()

    def _serve(self, work: SimpleQueue[Work | None], idle: list[None]) -> None:
        """One thread of the lane: calls from ``work`` until told to stop (None).

        Its first call is the one that started it. Once done with a call it
        offers itself in ``idle`` before answering, so the next ``run`` (which
        may follow that answer at once) claims it instead of starting a thread.
        """
        lock = self._lock
        while (item := work.get()) is not None:
            if item.future.cancelled():  # cancelled before it started: dropped
                idle.append(None)
                continue
            with lock:
                self._running += 1
            started = time.perf_counter()
            ok, value = True, None
            try:
                value = item.context.run(item.call)
            except BaseException as exc:
                ok, value = False, exc
            with lock:
                self._running -= 1
            try:
                if self.observe is not None:
                    self.observe(time.perf_counter() - started, None if ok else value)
            except BaseException as exc:  # answered as the call's own failure would be
                ok, value = False, exc
            idle.append(None)
            item.outbox.post(item.future, ok, value)
            del item, value  # not kept alive while the thread waits for the next call

    def close(self) -> None:
        """After the last request: let running calls end, drop any never started."""
        threads, self._threads = self._threads, []
        work, self._work = self._work, SimpleQueue()  # a later run starts new threads
        self._idle = []
        self._drop(work)
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join()
        self._drop(work)  # put by a run racing this close

    @staticmethod
    def _drop(work: SimpleQueue[Work | None]) -> None:
        while True:
            try:
                item = work.get_nowait()
            except Empty:
                return
            if item is not None:
                item.outbox.post(item.future, False, None)


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
