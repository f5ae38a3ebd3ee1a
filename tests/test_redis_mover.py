"""The mover's one-statement batch on PostgreSQL stores what the row-by-row copy stores.

``mover._move_batch`` hands PostgreSQL the stream entries' bodies as they are
and lets it take the columns out; ``SqlLedger.copy`` (the path every other
ledger write takes, and the mover's fallback) gets the rows parsed in Python.
Both must leave the same events and links behind, for every kind of field.

A moved batch leaves its stream by a trim below the id after its last entry
(``Mover._drop``): an event added while the batch was being moved stays for
the next pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tokenquota import Quota
from tokenquota.storage.ledger_rows import event_links
from tokenquota.storage.redis import RedisStore
from tokenquota.storage.redis.mover import _move_batch
from tokenquota.storage.sql import schema as t


@pytest.fixture
def quota(postgres_url: str, redis_url: str) -> Iterator[Quota]:
    with tokenquota.open(postgres_url, redis=redis_url) as opened:
        yield opened


def paused(quota: Quota) -> RedisStore:
    store = quota.store
    assert isinstance(store, RedisStore)
    store._stop.set()
    store._mover.join(timeout=10)
    store._stop.clear()  # close() still flushes and closes; no thread restarts
    return store


def stored(store: RedisStore) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with store.db.tx() as conn:
        events = [tuple(r) for r in conn.execute(sa.select(t.events).order_by(t.events.c.id))]
        links = conn.execute(
            sa.select(t.event_subjects).order_by(
                t.event_subjects.c.event_id, t.event_subjects.c.subject
            )
        )
        return events, [tuple(r) for r in links]


def test_one_statement_batch_stores_what_the_row_copy_stores(quota: Quota) -> None:
    store = paused(quota)
    quota.set_parents("user:ann", ["team:x"])
    quota.set_parents("team:x", ["company:acme"])
    assert quota.consume("user:ann", tokens=7).allowed
    assert quota.consume(
        "user:ann",
        tokens=2**62,
        mode="record",
        timestamp=datetime.now(UTC) - timedelta(minutes=5),  # ts apart from recorded_at
        idempotency_key='k-ü "quoted" 100%',
        model="gpt-ø",
        tags={"feature": "chat", "emoji": "🙂", "path": 'a\\b "c"'},
    ).allowed
    assert quota.consume("user:bob", requests=3, resource="resource:gpu").allowed
    entries = store.redis.xrange(store.layout.stream(0))
    assert len(entries) == 3

    with store.db.tx(hot=True) as conn:
        _move_batch(conn, entries)
    batch = stored(store)

    with store.db.tx(hot=True) as conn:
        conn.execute(t.event_subjects.delete())
        conn.execute(t.events.delete())
        rows, links = [], []
        for _, data in entries:
            body = json.loads(data[b"e"])
            rows.append({"id": int(data[b"id"]), **body})
            links += event_links(int(data[b"id"]), body)
        store.mover.ledger.copy(conn, rows, links)
    assert stored(store) == batch
    assert len(batch[0]) == 3
    assert len(batch[1]) == len(links) == 8  # ann's events charge 3 subjects each, bob's 2

    with store.db.tx(hot=True) as conn:  # a second copy of a batch changes nothing
        _move_batch(conn, entries)
    assert stored(store) == batch
    store.redis.delete(store.layout.stream(0))


def test_an_event_added_while_a_batch_moves_stays_for_the_next_pass(
    quota: Quota, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = paused(quota)
    mover = store.mover
    for tokens in (1, 2, 3):
        assert quota.consume("user:ann", tokens=tokens).allowed
    stream = store.layout.stream(0)
    insert = mover._insert_events
    late: list[int] = []

    def and_one_more(conn: Any, entries: Any) -> Any:
        if not late:  # once: a consume lands between the read and the trim
            late.append(1)
            assert quota.consume("user:ann", tokens=40).allowed
        return insert(conn, entries)

    monkeypatch.setattr(mover, "_insert_events", and_one_more)
    assert mover.flush() == 3
    (left,) = store.redis.xrange(stream)  # the late event, and only it
    assert json.loads(left[1][b"e"])["amounts"]["tokens"] == 40
    assert mover.flush() == 1
    assert store.redis.xlen(stream) == 0
    events, _ = stored(store)
    assert len(events) == 4


@pytest.mark.parametrize("body", [b"[]", b"{}", b'"event"', b"null", b'{"kind":"consume"}'])
def test_a_body_that_is_no_event_row_is_quarantined_and_the_rest_moves(
    quota: Quota, body: bytes
) -> None:
    """The batch splices the entry's id into each body; a body that is not a whole
    event object makes PostgreSQL refuse the statement, and the row-by-row path
    sets that entry aside without holding back the events around it."""
    store = paused(quota)
    assert quota.consume("user:ann", tokens=1, idempotency_key="before").allowed
    stream = store.layout.stream(0)
    store.redis.xadd(stream, {b"e": body, b"id": b"999999"})
    assert quota.consume("user:ann", tokens=1, idempotency_key="after").allowed
    assert store.flush() == 2
    assert sorted(e.idempotency_key or "" for e in quota.events().items) == ["after", "before"]
    kept = store.quarantined()
    assert [entry["e"] for entry in kept] == [body.decode()]
    assert store.redis.xlen(stream) == 0


def test_the_stream_id_wins_over_an_id_inside_the_body(quota: Quota) -> None:
    """The entry's id is put in last, so a body carrying an ``id`` of its own (no
    service writes one) cannot move an event under another id than its links'."""
    store = paused(quota)
    assert quota.consume("user:ann", tokens=5).allowed
    stream = store.layout.stream(0)
    [(entry_id, data)] = store.redis.xrange(stream)
    body = json.loads(data[b"e"])
    store.redis.xdel(stream, entry_id)
    own = int(data[b"id"])
    planted = {b"e": json.dumps({"id": own + 1000, **body}).encode(), b"id": str(own).encode()}
    with store.db.tx(hot=True) as conn:
        _move_batch(conn, [(b"0-1", planted)])
    events, links = stored(store)
    assert [e[0] for e in events] == [own]
    assert {link[2] for link in links} == {own}
