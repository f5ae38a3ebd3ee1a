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

A waiting caller blocks on a lock of its own that the leader releases (a
``threading.Event`` cost the leader a ``Condition`` round per caller, inside
the batch's serial section, and every caller a ``Condition`` of its own).

Several processes on one SQLite file (``serve --workers 2``) each have a
leader, and the file has one write lock: the one that found it taken slept
in SQLite's busy handler (1, 2, 5, 10 ms and longer) and the lock often sat
free meanwhile, or went back to the same process. So the leaders take turns
at a file lock first (``WriterTurns``): the waiting one sleeps in the kernel
and wakes when the other commits. It takes its batch only once it has the
turn, so every step queued while it waited shares the commit it waited for
(docs/performance-log.md, session 9).

``run`` owns the transaction and what each step's error means (see
``SqlMeter._run_batch``: a savepoint per step, so one step's error undoes
only itself and reaches only its own caller). Nothing here knows SQL.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

try:
    import fcntl
except ImportError:  # Windows has none: leaders there meet at SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

R = TypeVar("R")

# A bound on the work one commit carries, so a caller's wait stays bounded too.
BATCH_LIMIT = 64


class Job(Generic[R]):
    """One queued step: what it needs, then its answer or its error."""

    __slots__ = ("batchable", "error", "lead", "result", "series", "step", "wake")

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
        # Held, made only for a caller that waits (``submit``), which blocks acquiring
        # it again; released by the leader once the job is answered or is to lead
        # next. A lone caller leads at once and never needs one.
        self.wake: _thread.LockType | None = None
        self.lead = False  # set (before ``wake`` is released) when it is to lead next

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
        # Taken for each batch when set (the SQL meter, on a SQLite file): leaders of
        # other processes on the same file wait there.
        self.turns: WriterTurns | None = None
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
                wake = job.wake = _thread.allocate_lock()
                wake.acquire()
        if job.wake is not None:
            job.wake.acquire()  # until the leader releases it
            if not job.lead:
                return job.answer()
            job.wake = None  # led next: its own step is still queued, first in line
        self._lead()
        return job.answer()

    def _lead(self) -> None:
        # The turn first (another process's leader may hold it): every step queued
        # while this one waits joins the batch, so the commit it waited for is
        # shared by as many as it can be.
        turn, error = self.turns, None
        if turn is not None:
            try:
                turn.__enter__()
            except BaseException as exc:  # answered as a failed batch, below
                turn, error = None, exc
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
            self.batches += 1
            self.largest = max(self.largest, len(batch))
        try:
            if error is not None:
                raise error
            self._run(batch)
        except BaseException as exc:
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None
        finally:
            if turn is not None:
                turn.__exit__(None, None, None)  # committed: the next process may go
            with self._lock:
                if self._queue:
                    heir = self._queue[0]
                    heir.lead = True
                    assert heir.wake is not None  # queued while a leader led: it waits
                    heir.wake.release()
                else:
                    self._leading = False
            for job in batch:
                if job.wake is not None:
                    job.wake.release()


class WriterTurns:
    """An exclusive lock on a file beside a SQLite database, for group commit's leaders.

    ``flock`` on ``<database>-writer`` (never the database or its ``-shm``: closing
    any descriptor of a file drops the process's POSIX locks on it, which are
    SQLite's). A leader waiting here sleeps in the kernel and wakes as soon as
    the holder's batch has committed, where SQLite's busy handler would poll in
    sleeps of 1 to 100 ms. Writers that do not take it (the CLI, pruning, an
    older version) still meet the leaders at SQLite's own lock, as before: the
    turns only order the leaders, SQLite's lock is what makes a step atomic.

    The file is opened once, by the first batch, and kept open until ``close``
    (the store's): each batch is then one ``flock`` to take the turn and one to
    give it back, where opening and closing the file each time cost two more
    system calls a batch (about 10 µs, performance-log.md, session 11). The
    descriptor is close-on-exec, and one inherited by a forked child is never
    used there (a lock taken on it would be the parent's very lock, which
    ``flock`` grants again; unlocking it would release the parent's): the
    child opens the file again for itself. The kernel releases the lock if the
    process dies. A file that cannot be opened (a read-only directory) means
    no turn is taken; it is tried again at the next batch.
    """

    __slots__ = ("_fd", "_held", "_pid", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1  # open from the first batch until ``close``
        self._pid = -1  # the process that opened it
        self._held = False  # while a batch holds the turn; entered by one leader at a time

    @classmethod
    def beside(cls, database: str | None) -> WriterTurns | None:
        """Turns for the SQLite file at ``database``; None for an in-memory one."""
        if fcntl is None or not database or database == ":memory:" or database.startswith("file:"):
            return None
        # Absolute now, as SQLite resolved it when the store opened it.
        return cls(f"{os.path.abspath(database)}-writer")

    def _open(self) -> int:
        """The kept descriptor, opened if this process has none; -1 if it cannot be."""
        pid = os.getpid()
        if self._fd >= 0 and self._pid == pid:
            return self._fd
        # None yet, or the parent's (inherited by fork): never locked or closed here
        # through that one, since the parent's lock lives on the same open file.
        self._fd = -1
        try:
            # Read-only is enough for flock: another user who may read it takes turns too.
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return -1
        self._fd, self._pid = fd, pid
        return fd

    def __enter__(self) -> None:
        fd = self._open()
        if fd < 0:
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._held = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._held:
            return
        self._held = False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:  # never keeps the lead from passing on: drop the descriptor
            self.close()

    def close(self) -> None:
        """Close the kept descriptor (which releases a turn still held); the store's close."""
        fd, self._fd, self._held = self._fd, -1, False
        if fd >= 0 and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)
