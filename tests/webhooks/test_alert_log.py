"""The alert outbox as every store reads it (``AlertLog``), and the delivery tables' claims."""

from __future__ import annotations

import threading
from datetime import timedelta

from tests.webhooks.outbox import alert, record
from tokenquota import FrozenClock, Quota
from tokenquota.domain.webhooks import DeliveryStatus, Endpoint
from tokenquota.storage.webhooks import webhook_tables


def test_events_read_in_order_and_fanned_once(quota: Quota) -> None:
    store = quota.store
    ids = [record(quota, alert(f"user:a{i}")) for i in range(3)]
    assert ids == sorted(ids)
    assert [e.id for e in store.alert_events(after=0, limit=10)] == ids  # type: ignore[attr-defined]
    assert [e.id for e in store.alert_events(after=ids[0], limit=1)] == ids[1:2]  # type: ignore[attr-defined]
    assert [e.subject for e in store.unfanned_alert_events(10)] == ["user:a0", "user:a1", "user:a2"]  # type: ignore[attr-defined]
    store.mark_alerts_fanned([ids[0], ids[2]])  # type: ignore[attr-defined]
    assert [e.id for e in store.unfanned_alert_events(10)] == [ids[1]]  # type: ignore[attr-defined]
    event = webhook_tables(store).alert_event(ids[1])
    assert event is not None
    assert event.subject == "user:a1"
    assert event.used == 800


def test_a_due_delivery_is_claimed_by_one_claimer_until_its_lease_ends(
    quota: Quota, clock: FrozenClock
) -> None:
    tables = webhook_tables(quota.store)
    now = clock.now()
    tables.add_endpoint(
        Endpoint("wh_claims", "https://example.com/", frozenset(), None, None, now, None),
        actor="test",
    )
    events = [record(quota, alert(f"user:c{i}")) for i in range(20)]
    assert tables.fan_out([(e, "wh_claims") for e in events], events, now) == 20
    assert tables.fan_out([(e, "wh_claims") for e in events], events, now) == 0  # no-ops
    assert tables.unfanned_alert_events(10) == []
    lease = now + timedelta(seconds=30)
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer() -> None:
        start.wait()
        while got := tables.claim(now, lease, 3):
            with lock:
                claimed.extend(d.id for d in got)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed))  # nobody got a row another holds
    assert len(claimed) == 20
    assert tables.claim(now + timedelta(seconds=29), lease, 50) == []  # leased
    again = tables.claim(now + timedelta(seconds=31), lease + timedelta(seconds=31), 50)
    assert len(again) == 20  # the lease ran out: due again (a crashed sender)
    first = again[0]
    tables.finish(
        first.id,
        status=DeliveryStatus.DELIVERED,
        attempts=1,
        next_attempt_at=now,
        last_status=204,
        last_error=None,
        at=now,
    )
    done = tables.delivery(first.id)
    assert done is not None
    assert done.status is DeliveryStatus.DELIVERED
    assert done.delivered_at == now
    assert tables.delivery_counts() == {"pending": 19, "delivered": 1, "failed": 0}
    assert tables.remove_endpoint("wh_claims", actor="test", now=now)
    assert tables.delivery(first.id) is None
