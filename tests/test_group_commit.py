"""Group commit on SQLite and PostgreSQL (storage/sql/group.py): many decisions, one commit.

What must stay true with it (contract §10): exact admission under threads
and processes, nothing acknowledged lost when the process is killed (the
answer comes after the commit), and one decision's error reaching only its
own caller, never the others of its batch.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START
from tests.workers import drain
from tokenquota import FrozenClock, Quota
from tokenquota.domain.errors import IdempotencyConflict, NotFound, ValidationError
from tokenquota.storage.sql.group import GroupCommit, Job, WriterTurns

MAX = 2**63 - 1
SQL_BACKENDS = ["sqlite", "postgres"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'quota.db'}"
    return str(request.getfixturevalue("postgres_url"))


def group(quota: Quota) -> GroupCommit:
    meter: Any = quota.store.meter  # type: ignore[attr-defined]
    found: GroupCommit = meter.group
    return found


@contextmanager
def writers_held(url: str) -> Iterator[None]:
    """Hold every writer of the store back from outside, until the block ends.

    SQLite: another connection's BEGIN IMMEDIATE takes the file's write lock.
    PostgreSQL: another session holds the global advisory key exclusively,
    which every hot write takes (shared) before anything else.
    """
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(29809)"))
            yield
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# one batch: each caller gets its own answer -----------------------------------------------
def test_errors_in_a_batch_reach_only_their_own_callers(url: str) -> None:
    quota = tokenquota.open(url, clock=FrozenClock(START), strict_subjects=True)
    try:
        quota.put_subject("company:acme")
        quota.put_subject("user:big")
        for user in ("user:a", "user:b", "user:c"):
            quota.put_subject(user, parents=["company:acme"])
        quota.set_limit("company:acme", "tokens", "day", 1_000)
        first = quota.consume("user:a", tokens=5, idempotency_key="k")
        assert quota.consume("user:big", tokens=MAX, mode="record").allowed
        events_before = quota.events(limit=1).total

        calls: dict[str, Callable[[], Any]] = {
            "admitted b": lambda: quota.consume("user:b", tokens=10),
            "conflict": lambda: quota.consume("user:a", tokens=6, idempotency_key="k"),
            "admitted c": lambda: quota.consume("user:c", tokens=20),
            "unknown": lambda: quota.consume("user:ghost", tokens=1),
            "replay": lambda: quota.consume("user:a", tokens=5, idempotency_key="k"),
            "too large": lambda: quota.consume("user:big", tokens=1),
            "denied": lambda: quota.consume("user:c", tokens=2_000),
            "admitted a": lambda: quota.consume("user:a", tokens=30, idempotency_key="k2"),
        }
        outcomes: dict[str, Any] = {}

        def call(name: str) -> None:
            try:
                outcomes[name] = calls[name]()
            except Exception as exc:
                outcomes[name] = exc

        commits = group(quota)
        batches = commits.batches
        with writers_held(url):
            # The first caller leads and waits for the store; the others queue behind it.
            leader = threading.Thread(target=call, args=("admitted b",))
            leader.start()
            wait_until(lambda: commits.batches == batches + 1, "the leader's batch")
            rest = [threading.Thread(target=call, args=(name,)) for name in list(calls)[1:]]
            for thread in rest:
                thread.start()
            wait_until(lambda: commits.waiting == len(rest), "the callers to queue")
        for thread in [leader, *rest]:
            thread.join(60)
        assert commits.largest >= len(rest)  # the queued ones shared one transaction

        assert isinstance(outcomes["conflict"], IdempotencyConflict)
        assert isinstance(outcomes["unknown"], NotFound)
        assert isinstance(outcomes["too large"], ValidationError)
        assert outcomes["too large"].code == "amount_too_large"
        assert outcomes["denied"].allowed is False
        replay = outcomes["replay"]
        assert (replay.replayed, replay.event_id) == (True, first.event_id)
        admitted = [outcomes[name] for name in ("admitted a", "admitted b", "admitted c")]
        assert all(d.allowed and not d.replayed for d in admitted)

        # Exactly the admitted ones were written, each once, and nothing of the others.
        assert quota.events(limit=1).total == events_before + 3
        assert {e.id for e in quota.iter_events(subject="company:acme")} >= {
            d.event_id for d in admitted
        }
        (company,) = quota.usage("company:acme").limits
        assert company.used == 5 + 10 + 20 + 30
        with pytest.raises(NotFound):
            quota.get_subject("user:ghost")
        assert quota.consume("user:a", tokens=30, idempotency_key="k2").replayed
    finally:
        quota.close()


def test_each_step_of_a_batch_is_decided_on_the_writes_of_the_steps_before_it(url: str) -> None:
    """Debits and holds mixed in one batch: on PostgreSQL a step's writes are still
    queued when the next step begins, and must reach the store before its reads."""
    quota = tokenquota.open(url, clock=FrozenClock(START))
    try:
        for user in ("user:a", "user:b", "user:c", "user:d", "user:e"):
            quota.set_parents(user, ["company:acme"])
        quota.set_limit("company:acme", "tokens", "day", 1_000)
        outcomes: dict[str, Any] = {}
        calls: dict[str, Callable[[], Any]] = {
            "lead": lambda: quota.consume("user:a", tokens=1),
            "debit 600": lambda: quota.consume("user:a", tokens=600),
            "hold 500, over": lambda: quota.reserve("user:b", tokens=500),
            "hold 300": lambda: quota.reserve("user:c", tokens=300),
            "debit 100, over": lambda: quota.consume("user:d", tokens=100),
            "debit 99": lambda: quota.consume("user:e", tokens=99),
            "debit 1, over": lambda: quota.consume("user:e", tokens=1),
        }

        def call(name: str) -> None:
            try:
                outcomes[name] = calls[name]()
            except Exception as exc:
                outcomes[name] = exc

        commits = group(quota)
        batches = commits.batches
        with writers_held(url):
            leader = threading.Thread(target=call, args=("lead",))
            leader.start()
            wait_until(lambda: commits.batches == batches + 1, "the leader's batch")
            rest: list[threading.Thread] = []
            for name in list(calls)[1:]:  # one by one: the batch keeps this order
                rest.append(threading.Thread(target=call, args=(name,)))
                rest[-1].start()
                wait_until(lambda: commits.waiting == len(rest), f"{name} to queue")
        for thread in [leader, *rest]:
            thread.join(60)
        assert commits.largest == len(rest)

        allowed = {name: outcome.allowed for name, outcome in outcomes.items()}
        assert allowed == {name: not name.endswith("over") for name in calls}
        (company,) = quota.usage("company:acme").limits
        assert (company.used, company.reserved, company.remaining) == (700, 300, 0)
    finally:
        quota.close()


@contextmanager
def events_refused_for(url: str, subject: str) -> Iterator[None]:
    """A real trigger that makes the store refuse ``subject``'s event row (PostgreSQL)."""
    engine = sa.create_engine(url)
    refuse = (
        "CREATE FUNCTION tq_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.subject = '{subject}' THEN RAISE EXCEPTION 'refused'; END IF; "
        "RETURN NEW; END $$"
    )
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(refuse))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER tq_refuse BEFORE INSERT ON events "
                    "FOR EACH ROW EXECUTE FUNCTION tq_refuse()"
                )
            )
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS tq_refuse ON events"))
            conn.execute(sa.text("DROP FUNCTION IF EXISTS tq_refuse()"))
        engine.dispose()


def test_a_write_the_store_refuses_fails_its_whole_batch_and_commits_none_of_it(
    postgres_url: str,
) -> None:
    """On PostgreSQL a step's writes travel with the next step's reads (one round trip a
    decision): a write refused there fails every caller of its batch, none acknowledged,
    nothing of the batch kept; the batches before and after are untouched."""
    url = postgres_url
    quota = tokenquota.open(url, clock=FrozenClock(START))
    try:
        for user in ("user:a", "user:b", "user:c", "user:refused"):
            quota.put_subject(user, parents=["company:acme"])
        quota.set_limit("company:acme", "tokens", "day", 1_000)
        events_before = quota.events(limit=1).total
        outcomes: dict[str, Any] = {}

        def call(name: str, user: str, tokens: int) -> None:
            try:
                outcomes[name] = quota.consume(user, tokens=tokens)
            except Exception as exc:
                outcomes[name] = exc

        commits = group(quota)
        batches = commits.batches
        with events_refused_for(url, "user:refused"):
            with writers_held(url):
                leader = threading.Thread(target=call, args=("a", "user:a", 5))
                leader.start()
                wait_until(lambda: commits.batches == batches + 1, "the leader's batch")
                queued = [("refused", "user:refused", 7), ("b", "user:b", 10), ("c", "user:c", 20)]
                rest = [threading.Thread(target=call, args=args) for args in queued]
                for thread in rest:
                    thread.start()
                wait_until(lambda: commits.waiting == len(rest), "the callers to queue")
            for thread in [leader, *rest]:
                thread.join(60)
        assert commits.largest == len(rest)

        assert outcomes["a"].allowed  # its own batch, before
        for name in ("refused", "b", "c"):
            assert isinstance(outcomes[name], Exception), (name, outcomes[name])
        assert quota.events(limit=1).total == events_before + 1
        (company,) = quota.usage("company:acme").limits
        assert company.used == 5
        assert quota.consume("user:b", tokens=10).allowed  # the store goes on
        (company,) = quota.usage("company:acme").limits
        assert company.used == 15
    finally:
        quota.close()


def test_a_batch_that_cannot_commit_answers_every_caller_with_the_error() -> None:
    """The leader's transaction failing is every caller's error: none was acknowledged."""
    seen: list[int] = []

    def run(jobs: Sequence[Job[Any]]) -> None:
        seen.append(len(jobs))
        for job in jobs:
            job.result = job.step(None)
        if len(jobs) > 1:
            raise ConnectionError("the commit failed")

    commits = GroupCommit(run, limit=4)
    gate = threading.Event()
    results: list[Any] = []

    def first(_: Any) -> str:
        gate.wait(30)
        return "first"

    def call(step: Callable[[Any], str]) -> None:
        try:
            results.append(commits.submit(step, frozenset()))
        except ConnectionError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    wait_until(lambda: commits.batches == 1, "the leader's batch")
    threads += [threading.Thread(target=call, args=(lambda _: "later",)) for _ in range(6)]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: commits.waiting == 6, "the callers to queue")
    gate.set()
    for thread in threads:
        thread.join(30)
    assert seen == [1, 4, 2]  # bounded batches, the lead passed on while callers wait
    assert results.count("first") == 1
    assert sum(isinstance(r, ConnectionError) for r in results) == 6
    assert commits.waiting == 0


# SQLite: leaders of several processes take turns -------------------------------------------
def flock_waiters(pid: int) -> int:
    """flock requests of ``pid`` blocked in the kernel (``/proc/locks``' "->" lines)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "-> FLOCK" in line and f" {pid} " in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads /proc/locks (Linux)")
def test_a_sqlite_leader_waits_for_another_process_turn_at_the_lock_beside_the_file(
    tmp_path: Path,
) -> None:
    """The file lock a leader holds for its batch (``WriterTurns``) holds back the leader
    of any other store on the file, which wakes when it is released, and not before:
    the turn is waited for in the kernel, not in SQLite's busy handler."""
    path = tmp_path / "quota.db"
    quota = tokenquota.open(f"sqlite:///{path}", clock=FrozenClock(START))
    quota.set_limit("user:a", "tokens", "day", 100)
    assert quota.consume("user:a", tokens=1).allowed
    other = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT)
    answers: list[bool] = []
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's leader has the turn
        thread = threading.Thread(
            target=lambda: answers.append(quota.consume("user:a", tokens=1).allowed)
        )
        thread.start()
        wait_until(lambda: bool(answers) or flock_waiters(os.getpid()) == 1, "the leader to wait")
        assert answers == []  # nothing decided while the turn is another's
    finally:
        os.close(other)  # which releases the lock
    thread.join(30)
    assert answers == [True]
    assert quota.usage("user:a").limits[0].used == 2
    quota.close()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads /proc/locks (Linux)")
def test_a_leader_takes_its_batch_once_it_has_the_turn(tmp_path: Path) -> None:
    """Steps queued while a leader waits for another process's turn join its batch:
    the commit it waited for is shared by all of them (one batch, not two)."""
    path = tmp_path / "quota.db"
    quota = tokenquota.open(f"sqlite:///{path}", clock=FrozenClock(START))
    quota.set_limit("user:a", "tokens", "day", 100)
    assert quota.consume("user:a", tokens=1).allowed
    commits = group(quota)
    batches = commits.batches
    answers: list[bool] = []

    def consume() -> None:
        answers.append(quota.consume("user:a", tokens=1).allowed)

    other = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT)
    threads = [threading.Thread(target=consume) for _ in range(6)]
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's leader has the turn
        threads[0].start()
        wait_until(lambda: flock_waiters(os.getpid()) == 1, "the leader to wait for its turn")
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: commits.waiting >= 5, "the others to queue")
    finally:
        os.close(other)
    for thread in threads:
        thread.join(30)
    assert answers == [True] * 6
    assert commits.batches == batches + 1
    assert commits.largest == 6
    quota.close()


def test_writer_turns_that_cannot_open_their_file_take_no_turn(tmp_path: Path) -> None:
    """A database whose directory refuses the lock file still commits (no turn is taken)."""
    turns = WriterTurns(str(tmp_path / "missing" / "quota.db-writer"))
    with turns:
        pass
    assert WriterTurns.beside(":memory:") is None
    assert WriterTurns.beside(None) is None
    assert WriterTurns.beside(str(tmp_path / "q.db")) is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks (POSIX)")
def test_writer_turns_keep_their_file_and_a_forked_child_takes_turns_on_its_own(
    tmp_path: Path,
) -> None:
    """The turn file is opened once and kept (one ``flock`` to take a turn, one to give
    it back); a child forked while the parent holds the turn must wait for it like any
    other process, not take it through the descriptor it inherited (``flock`` would
    grant the parent's own lock again); ``close`` lets the file go."""
    turns = WriterTurns(str(tmp_path / "q.db-writer"))
    with turns:
        fd = turns._fd
    with turns:
        assert turns._fd == fd  # kept, not opened again
    read, write = os.pipe()
    with turns:
        pid = os.fork()
        if pid == 0:  # the child: may it take the turn now, without waiting?
            answer = b"?"
            try:
                try:
                    fcntl.flock(turns._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    answer = b"taken"
                except BlockingIOError:
                    answer = b"waits"
            finally:
                os.write(write, answer)
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    os.close(write)
    assert os.read(read, 16) == b"waits"
    os.close(read)
    assert status == 0
    turns.close()
    assert turns._fd == -1
    other = os.open(str(tmp_path / "q.db-writer"), os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nothing holds it any more
    os.close(other)


# races: threads and processes, exact admission ------------------------------------------
COMPANY_LIMIT = 3_000
USER_LIMIT = 150  # 36 users could spend 5,400: the company's limit binds
USERS = [f"user:g{i:02d}" for i in range(36)]
PROCESSES = 3


def prepare(quota: Quota) -> None:
    quota.set_limit("company:acme", "tokens", "day", COMPANY_LIMIT)
    for user in USERS:
        quota.set_parents(user, ["company:acme"])
        quota.set_limit(user, "tokens", "day", USER_LIMIT)


def drain_grouped(url: str, subjects: list[str], at: str) -> tuple[int, int]:
    """One thread per subject on one store (run in another process): admitted, largest batch."""
    quota = tokenquota.open(url, clock=FrozenClock(datetime.fromisoformat(at)))
    try:
        barrier = threading.Barrier(len(subjects))
        with ThreadPoolExecutor(len(subjects)) as pool:
            admitted = sum(pool.map(lambda s: drain(quota, s, barrier), subjects))
        return admitted, group(quota).largest
    finally:
        quota.close()


@pytest.mark.slow
def test_threads_in_several_processes_admit_exactly_the_limit(url: str) -> None:
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        prepare(quota)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_grouped, url, USERS[i::PROCESSES], START.isoformat())
            for i in range(PROCESSES)
        ]
        results = [f.result(timeout=300) for f in futures]
    assert sum(admitted for admitted, _ in results) == COMPANY_LIMIT
    assert max(largest for _, largest in results) > 1, "no decisions shared a commit"
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        (company,) = quota.usage("company:acme").limits
        assert company.used == COMPANY_LIMIT
        per_user = [int(quota.usage(user).limits[0].used or 0) for user in USERS]
        assert all(used <= USER_LIMIT for used in per_user)
        assert sum(per_user) == COMPANY_LIMIT
        events = list(quota.iter_events(subject="company:acme"))
        assert sum(e.amounts.to_numbers()["tokens"] for e in events) == COMPANY_LIMIT


def test_threads_in_one_process_admit_exactly_the_limit(url: str) -> None:
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        prepare(quota)
        barrier = threading.Barrier(len(USERS))
        with ThreadPoolExecutor(len(USERS)) as pool:
            admitted = sum(pool.map(lambda s: drain(quota, s, barrier), USERS))
        assert admitted == COMPANY_LIMIT
        (company,) = quota.usage("company:acme").limits
        assert company.used == COMPANY_LIMIT


# SIGKILL: nothing acknowledged is lost ---------------------------------------------------
KILL_THREADS = 16
ACKS_BEFORE_KILL = 300

# Consumes from many threads with a key each, printing each answer once it is given.
KILLED = """
import sys, threading
from datetime import datetime
import tokenquota
clock = tokenquota.FrozenClock(datetime.fromisoformat(sys.argv[2]))
quota = tokenquota.open(sys.argv[1], clock=clock)
commits = quota.store.meter.group
out = threading.Lock()
def work(t):
    for i in range(100000):
        key = f"{t}-{i}"
        decision = quota.consume("user:w%d" % t, tokens=t + 1, idempotency_key=key)
        with out:
            print(key, decision.event_id, t + 1, commits.largest, flush=True)
for t in range(int(sys.argv[3])):
    threading.Thread(target=work, args=(t,)).start()
"""


def test_a_killed_process_loses_no_acknowledged_decision(url: str) -> None:
    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        for t in range(KILL_THREADS):
            quota.set_parents(f"user:w{t}", ["company:acme"])
        quota.set_limit("company:acme", "tokens", "total", 10**12)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, START.isoformat(), str(KILL_THREADS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acks: list[tuple[str, int, int, int]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            acks.append((words[0], int(words[1]), int(words[2]), int(words[3])))
            if len(acks) >= ACKS_BEFORE_KILL:
                proc.send_signal(signal.SIGKILL)  # mid-load: whatever was in flight is cut
                break
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert len(acks) >= ACKS_BEFORE_KILL, err[-2000:]
    assert max(a[3] for a in acks) > 1, "no decisions shared a commit before the kill"

    with tokenquota.open(url, clock=FrozenClock(START)) as quota:
        stored = {e.idempotency_key: e for e in quota.iter_events(subject="company:acme")}
        for key, event_id, tokens, _ in acks:
            assert key in stored, f"acknowledged {key} (event {event_id}) was lost"
            assert stored[key].id == event_id
            assert stored[key].amounts.to_numbers()["tokens"] == tokens
        # Counters agree with the ledger: nothing half-written survived the kill.
        (company,) = quota.usage("company:acme").limits
        assert company.used == sum(e.amounts.to_numbers()["tokens"] for e in stored.values())
        # A retry of an acknowledged request answers it, charging nothing more.
        key, event_id, tokens, _ = acks[-1]
        again = quota.consume(f"user:w{tokens - 1}", tokens=tokens, idempotency_key=key)
        assert (again.replayed, again.event_id) == (True, event_id)


# the leader's kept connection -------------------------------------------------------------
def test_a_kept_connection_lost_while_idle_costs_no_decision(postgres_url: str) -> None:
    """The leader keeps its connection between batches (no pool ping): when the server
    dropped it meanwhile, the next batch runs again on a fresh one, nothing committed twice."""
    with tokenquota.open(postgres_url, clock=FrozenClock(START)) as quota:
        quota.set_limit("user:a", "tokens", "day", 100)
        assert quota.consume("user:a", tokens=10).allowed
        meter: Any = quota.store.meter  # type: ignore[attr-defined]
        pid = meter.db._kept.connection.driver_connection.info.backend_pid
        engine = sa.create_engine(postgres_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            engine.dispose()
        decision = quota.consume("user:a", tokens=20, idempotency_key="after")
        assert decision.allowed
        assert meter.db._kept.connection.driver_connection.info.backend_pid != pid
        (status,) = quota.usage("user:a").limits
        assert status.used == 30
        assert quota.events(subject="user:a").total == 2
