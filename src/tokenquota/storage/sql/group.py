"""Group commit: concurrent decisions of one process share one transaction and one commit.

A commit is the durable part of a decision (an fsync on SQLite, a WAL flush
on PostgreSQL), and one commit can make any number of decisions durable. So
a caller does not open a transaction of its own: it queues its step and
waits. The first caller to find nobody leading becomes the **leader**: it
takes up to ``limit`` queued steps (its own among them) and hands them to
``run``, which executes them one after another in one transaction (each sees
what the previous one wrote, so each is decided against the numbers the one
before it left) and commits once. Only then are the callers of the batch
answered: nothing is acknowledged before it is durable (contract §10).
If more steps queued meanwhile, the leader passes the lead to the oldest of
them and returns its own answer; that caller runs the next batch.

At one caller this is one transaction per decision, as before, plus a lock
and a list; under load the batch grows by itself with the queue, with no
timer: a step waits at most for the batch before it.

``run`` owns the transaction and what each step's error means (see
``SqlMeter._run_batch``: a savepoint per step, so one step's error undoes
only itself and reaches only its own caller). Nothing here knows SQL.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

R = TypeVar("R")

# A bound on the work one commit carries, so a caller's wait stays bounded too.
BATCH_LIMIT = 64


class Job(Generic[R]):
    """One queued step: what it needs, then its answer or its error."""

    __slots__ = ("batchable", "done", "error", "lead", "result", "series", "step")

    def __init__(
        self, step: Callable[[Any], R], series: frozenset[str], batchable: Any = None
    ) -> None:
        self.step = step  # called by ``run`` with its transaction
        self.series = series  # what the step locks (PostgreSQL)
        # What ``run`` may decide together with like jobs instead of calling ``step``
        # (the SQL meter's consumes: storage/sql/batch.py); None: only ``step``.
        self.batchable = batchable
        self.result: R | None = None
        self.error: BaseException | None = None
        # Made only for a caller that waits (``submit``): a lone caller leads at once
        # and never needs one.
        self.done: threading.Event | None = None
        self.lead = False  # set (with ``done``) when this job's caller is to lead next

    def answer(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit:
    """The queue of one store's steps, and its leader."""

    def __init__(
        self, run: Callable[[Sequence[Job[Any]]], None], *, limit: int = BATCH_LIMIT
    ) -> None:
        self._run = run
        self._limit = limit
        self._lock = threading.Lock()
        self._queue: deque[Job[Any]] = deque()
        self._leading = False
        # Counted for the bench and the tests: batches run, and the largest one.
        self.batches = 0
        self.largest = 0

    @property
    def waiting(self) -> int:
        """Steps queued and not yet taken by a leader."""
        with self._lock:
            return len(self._queue)

    def submit(self, step: Callable[[Any], R], series: frozenset[str], batchable: Any = None) -> R:
        """Run ``step`` in a shared transaction; its answer once that has committed."""
        job: Job[R] = Job(step, series, batchable)
        with self._lock:
            self._queue.append(job)
            lead = not self._leading
            self._leading = True
            if not lead:
                # Under the lock that queued it: a leader that takes the job finds it.
                job.done = threading.Event()
        if job.done is not None:
            job.done.wait()
            if not job.lead:
                return job.answer()
            job.done.clear()  # led next: its own step is still queued, first in line
        self._lead()
        return job.answer()

    def _lead(self) -> None:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
            self.batches += 1
            self.largest = max(self.largest, len(batch))
        try:
            self._run(batch)
        except BaseException as exc:
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None
        finally:
            with self._lock:
                if self._queue:
                    heir = self._queue[0]
                    heir.lead = True
                    assert heir.done is not None  # queued while a leader led: it waits
                    heir.done.set()
                else:
                    self._leading = False
            for job in batch:
                if job.done is not None:
                    job.done.set()
