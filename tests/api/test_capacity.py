"""Decisions never queue behind reads: separate capacity, heavy reads bounded per key.

Real server, real stores. To hold reads in their threads for as long as the
test needs, a transaction of the test locks the ledger tables in PostgreSQL:
every history or ledger read then waits inside its thread, exactly like a slow
query does. Decisions are answered by Redis (the ledger follows through the
mover), so they do not touch the locked tables, and only the service's own
scheduling could make them wait. SQLite cannot stage this: a reader there is
never blocked by another connection without the writers being blocked too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.api.conftest import ADMIN_KEY, LiveServer
from tokenquota.api.app import create_app
from tokenquota.engine import Quota
from tokenquota.http.capacity import Capacity
from tokenquota.settings import Settings

GUARD_SECONDS = 30  # only a guard against hanging: nothing here is timed


@pytest.fixture
def server(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    settings = Settings(
        db=postgres_url,
        redis=redis_url,
        admin_key=SecretStr(ADMIN_KEY),
        spool=str(tmp_path / "spool.db"),
        threads=2,
        decision_threads=2,
        read_threads=2,
        heavy_reads_per_key=2,
    )
    live = LiveServer(create_app(settings))
    yield live
    live.stop()


class LedgerLock:
    """A transaction of the test's own that holds the ledger tables locked."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.conn: sa.Connection | None = None

    def lock(self) -> None:
        self.conn = self.engine.connect()
        self.conn.begin()
        self.conn.execute(sa.text("LOCK TABLE events, event_subjects IN ACCESS EXCLUSIVE MODE"))

    def waiters(self) -> int:
        """Sessions waiting for the lock: reads stuck inside their threads."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND relation IN "
                    "('events'::regclass, 'event_subjects'::regclass)"
                )
            ).scalar_one()
        return int(found)

    def unlock(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerLock]:
    held = LedgerLock(postgres_url)
    try:
        yield held
    finally:
        held.unlock()
        held.engine.dispose()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_member_saturating_reads_does_not_delay_another_tenants_consume(
    server: LiveServer, ledger: LedgerLock
) -> None:
    quota: Quota = server.app.state.quota
    capacity: Capacity = server.app.state.capacity
    quota.set_parents("user:mallory", ["company:one"])
    quota.set_parents("user:trent", ["company:two"])
    quota.set_limit("company:two", "tokens", "day", 1_000)
    mallory_key, mallory = quota.create_key("member", subject="user:mallory")
    trent = quota.create_key("member", subject="user:trent")[1]

    def client(key: str) -> httpx.Client:
        return httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=GUARD_SECONDS
        )

    with client(mallory) as m, client(trent) as t:
        assert m.post(
            "/v1/consume", json={"subject": "user:mallory", "amounts": {"tokens": 3}}
        ).is_success
        assert t.post(
            "/v1/consume", json={"subject": "user:trent", "amounts": {"tokens": 1}}
        ).is_success
        assert quota.events().total == 2  # moved into the ledger before it is locked

        ledger.lock()
        finished: list[str] = []
        answers: dict[str, httpx.Response] = {}

        def history() -> None:
            answers["history"] = m.get(
                "/v1/subjects/user:mallory/history", params={"granularity": "hour"}
            )
            finished.append("history")

        def export() -> None:
            with m.stream(
                "GET", "/v1/events", params={"subject": "user:mallory", "format": "csv"}
            ) as response:
                response.read()
                answers["export"] = response
            finished.append("export")

        readers = [threading.Thread(target=history), threading.Thread(target=export)]
        for reader in readers:
            reader.start()
        # Both are inside their threads, waiting on the ledger: the read lane is full.
        wait_until(lambda: ledger.waiters() >= 2, "both reads to wait on the ledger")
        wait_until(lambda: capacity.reads.borrowed_tokens == 2, "the reads to hold the lane")
        assert capacity.heavy == {mallory_key.id: 2}

        # Another tenant's decisions, with a key never seen before (authentication
        # does not wait for a read thread either), complete while the reads wait.
        fresh = quota.create_key("member", subject="user:trent")[1]
        with client(fresh) as t2:
            spent = t2.post("/v1/consume", json={"subject": "user:trent", "amounts": {"tokens": 5}})
            assert spent.status_code == 200, spent.text
        checked = t.post("/v1/check", json={"subject": "user:trent", "amounts": {"tokens": 5}})
        assert checked.status_code == 200, checked.text
        assert checked.json()["allowed"] is True

        # The member's next heavy read is turned away at once, not queued.
        third = m.get("/v1/subjects/user:mallory/history")
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "too_many_requests"
        assert third.headers["Retry-After"] == "1"
        assert finished == []
        assert capacity.reads.borrowed_tokens == 2

        # Unlocked, the reads complete as usual and the member's slots are free again.
        ledger.unlock()
        for reader in readers:
            reader.join(GUARD_SECONDS)
        assert sorted(finished) == ["export", "history"]
        assert answers["history"].status_code == 200, answers["history"].text
        assert answers["export"].status_code == 200
        assert "user:mallory" in answers["export"].text
        wait_until(lambda: not capacity.heavy, "the heavy-read slots to be released")
        assert m.get("/v1/subjects/user:mallory/history").status_code == 200
