"""A lane's threads (``http.capacity.Threads``): bounded, answered in batches, cancellable.

Real threads and a real event loop; each test waits on events it sets itself,
never on a timer (the waits below are only guards against hanging).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tokenquota.http.capacity import Threads

GUARD_SECONDS = 30


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the wakes other threads ask of it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        self.wakes += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def run(main: Callable[[], Any], loop: asyncio.AbstractEventLoop | None = None) -> Any:
    loop = loop or asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


def test_calls_finished_together_are_answered_in_one_wake_of_the_loop() -> None:
    """A group commit finishes a batch of calls at once: the loop is woken once for all
    of them, not once a call (a ThreadPoolExecutor asked for eight wakes here)."""
    lane = Threads("decisions", 8)
    started = threading.Barrier(9)
    release = threading.Event()
    loop = CountingLoop()

    def call(n: int) -> int:
        started.wait(GUARD_SECONDS)
        release.wait(GUARD_SECONDS)
        return n

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(lane.run(functools.partial(call, n))) for n in range(8)]
        await asyncio.sleep(0)  # the tasks put their calls on the lane
        started.wait(GUARD_SECONDS)  # all eight running, on eight threads
        before = loop.wakes
        release.set()
        # The loop stays blocked here until every call has finished and been handed over.
        wait_until(lambda: lane.borrowed_tokens == 0, "the calls to finish")
        outbox = lane._outbox
        assert outbox is not None
        wait_until(lambda: len(outbox.finished) == 8, "the calls to be handed over")
        answers = await asyncio.gather(*tasks)
        assert loop.wakes - before == 1
        return answers

    try:
        assert run(main, loop) == list(range(8))
    finally:
        lane.close()


def test_a_call_waiting_for_a_thread_is_dropped_when_cancelled_a_started_one_ends() -> None:
    lane = Threads("decisions", 1)
    entered = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(GUARD_SECONDS)
        ran.append("slow")
        return "slow"

    def queued() -> str:
        ran.append("queued")
        return "queued"

    async def main() -> None:
        first = asyncio.ensure_future(lane.run(slow))
        await asyncio.to_thread(entered.wait, GUARD_SECONDS)
        second = asyncio.ensure_future(lane.run(queued))
        await asyncio.sleep(0)  # put behind the busy thread
        first.cancel()
        second.cancel()
        release.set()
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await lane.run(lambda: "after") == "after"  # the thread serves on

    try:
        run(main)
    finally:
        lane.close()
    assert ran == ["slow"]  # the started call ran to its end; the waiting one never ran


def test_errors_reach_the_caller_and_the_observer() -> None:
    lane = Threads("reads", 2)
    seen: list[BaseException | None] = []
    lane.observe = lambda seconds, raised: seen.append(raised)

    def fails() -> None:
        raise LookupError("nope")

    def stops() -> None:
        raise StopIteration

    async def main() -> None:
        with pytest.raises(LookupError, match="nope"):
            await lane.run(fails)
        with pytest.raises(RuntimeError, match="StopIteration"):  # not a hang
            await asyncio.wait_for(lane.run(stops), GUARD_SECONDS)
        assert await lane.run(lambda: 5) == 5

    try:
        run(main)
    finally:
        lane.close()
    assert [type(x) for x in seen] == [LookupError, StopIteration, type(None)]


def test_close_lets_running_calls_end_and_drops_those_never_started() -> None:
    lane = Threads("decisions", 1)
    entered = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(GUARD_SECONDS)
        ran.append("slow")
        return "slow"

    async def main() -> None:
        first = asyncio.ensure_future(lane.run(slow))
        await asyncio.to_thread(entered.wait, GUARD_SECONDS)
        second = asyncio.ensure_future(lane.run(lambda: ran.append("queued")))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(asyncio.to_thread(lane.close))
        while lane._threads:  # close has begun: it took the threads and the queue
            await asyncio.sleep(0.001)
        release.set()
        await closing
        assert await first == "slow"
        with pytest.raises(asyncio.CancelledError):
            await second

    run(main)
    assert ran == ["slow"]


def test_threads_start_only_as_calls_need_them_up_to_the_bound() -> None:
    lane = Threads("decisions", 3)
    started = threading.Barrier(4)
    release = threading.Event()

    def call() -> str:
        started.wait(GUARD_SECONDS)
        release.wait(GUARD_SECONDS)
        return threading.current_thread().name

    def quick() -> str:
        return threading.current_thread().name

    async def main() -> None:
        assert {await lane.run(quick) for _ in range(5)} == {"tokenquota-decisions_0"}
        tasks = [asyncio.ensure_future(lane.run(call)) for _ in range(3)]
        await asyncio.to_thread(started.wait, GUARD_SECONDS)  # three at once: three threads
        more = asyncio.ensure_future(lane.run(quick))  # a fourth waits for one of them
        await asyncio.sleep(0.05)
        assert not more.done()
        assert lane.borrowed_tokens == 3
        release.set()
        names = await asyncio.gather(*tasks)
        assert len(set(names)) == 3
        await more
        assert len(lane._threads) == 3

    try:
        run(main)
    finally:
        lane.close()
