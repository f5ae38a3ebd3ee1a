"""Reservations and leases over real HTTP (uvicorn, the thread pool, SQLite)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock

# Midday, so no day window rolls over while a test runs.
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SECONDS_TO_MIDNIGHT = 12 * 3600


@pytest.fixture
def frozen(make_api: ServerFactory) -> Api:
    api = make_api(clock=FrozenClock(NOON))
    api.quota.set_parents("user:alice", ["company:acme"])
    api.quota.set_parents("user:bob", ["company:acme"])
    api.quota.set_limit("company:acme", "tokens", "day", 1_000)
    return api


@pytest.fixture
def http(frozen: Api) -> Iterator[httpx.Client]:
    with frozen.client() as client:
        yield client


def tokens(api: Api, subject: str = "company:acme") -> tuple[object, object, object]:
    (status,) = [s for s in api.quota.usage(subject).limits if s.metric == "tokens"]
    return status.used, status.reserved, status.remaining


def reserve(http: httpx.Client, subject: str = "user:alice", **body: Any) -> httpx.Response:
    return http.post("/v1/reservations", json={"subject": subject, **body})


def held_id(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    reservation_id: str = response.json()["reservation"]["id"]
    return reservation_id


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


# reservations -------------------------------------------------------------------------


def test_reserve_then_commit_less_frees_the_difference(frozen: Api, http: httpx.Client) -> None:
    response = reserve(http, amounts={"tokens": 800}, ttl=90)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"reservation", "decision"}
    held = body["reservation"]
    assert held["subject"] == "user:alice"
    assert held["amounts"] == {"tokens": 800, "requests": 1}
    assert held["state"] == "held"
    assert datetime.fromisoformat(held["expires_at"]) == datetime(
        2026, 3, 10, 12, 1, 30, tzinfo=UTC
    )
    assert body["decision"]["allowed"] is True
    assert response.headers["RateLimit-Remaining"] == "200"
    assert tokens(frozen) == (0, 800, 200)
    # The hold counts for every other caller.
    assert (
        http.post(
            "/v1/consume", json={"subject": "user:bob", "amounts": {"tokens": 300}}
        ).status_code
        == 429
    )

    response = http.post(f"/v1/reservations/{held['id']}/commit", json={"amounts": {"tokens": 500}})
    assert response.status_code == 200
    decision = response.json()
    assert (decision["allowed"], decision["mode"], decision["replayed"]) == (True, "record", False)
    assert decision["event_id"] is not None
    assert tokens(frozen) == (500, 0, 500)
    assert http.get(f"/v1/reservations/{held['id']}").json() == {**held, "state": "committed"}


def test_commit_with_more_records_the_excess(frozen: Api, http: httpx.Client) -> None:
    reservation_id = held_id(reserve(http, amounts={"tokens": 800}))
    response = http.post(
        f"/v1/reservations/{reservation_id}/commit", json={"amounts": {"tokens": 1_200}}
    )
    assert response.status_code == 200
    assert response.json()["allowed"] is True
    assert tokens(frozen) == (1_200, 0, 0)


def test_a_second_commit_replays_the_first_and_charges_once(
    frozen: Api, http: httpx.Client
) -> None:
    reservation_id = held_id(reserve(http, amounts={"tokens": 300}))
    path = f"/v1/reservations/{reservation_id}/commit"
    first = http.post(path, json={"amounts": {"tokens": 250}}).json()
    again = http.post(path, json={"amounts": {"tokens": 999}})
    assert again.status_code == 200
    assert again.json() == {**first, "replayed": True}
    assert frozen.quota.events(subject="user:alice").total == 1
    assert tokens(frozen) == (250, 0, 750)


def test_commit_without_amounts_records_the_estimate(frozen: Api, http: httpx.Client) -> None:
    no_body = held_id(reserve(http, amounts={"tokens": 100}))
    empty = held_id(reserve(http, amounts={"tokens": 200}))
    assert http.post(f"/v1/reservations/{no_body}/commit").status_code == 200
    assert http.post(f"/v1/reservations/{empty}/commit", json={"amounts": {}}).status_code == 200
    assert tokens(frozen) == (300, 0, 700)


def test_release_frees_and_a_second_release_is_a_no_op(frozen: Api, http: httpx.Client) -> None:
    reservation_id = held_id(reserve(http, amounts={"tokens": 600}))
    assert http.delete(f"/v1/reservations/{reservation_id}").json() == {"released": True}
    assert tokens(frozen) == (0, 0, 1_000)
    response = http.delete(f"/v1/reservations/{reservation_id}")
    assert (response.status_code, response.json()) == (200, {"released": False})
    assert http.get(f"/v1/reservations/{reservation_id}").json()["state"] == "released"
    error = assert_error(http.post(f"/v1/reservations/{reservation_id}/commit"), 409, "hold_closed")
    assert "released" in error["message"]

    committed = held_id(reserve(http, amounts={"tokens": 100}))
    http.post(f"/v1/reservations/{committed}/commit")
    assert http.delete(f"/v1/reservations/{committed}").json() == {"released": False}
    assert tokens(frozen) == (100, 0, 900)


def test_an_expired_reservation_frees_itself_and_commit_is_409(
    frozen: Api, http: httpx.Client
) -> None:
    assert frozen.clock is not None
    reservation_id = held_id(reserve(http, amounts={"tokens": 900}, ttl=30))
    frozen.clock.advance(seconds=29)
    assert http.get(f"/v1/reservations/{reservation_id}").json()["state"] == "held"
    frozen.clock.advance(seconds=1)
    assert http.get(f"/v1/reservations/{reservation_id}").json()["state"] == "expired"
    assert tokens(frozen) == (0, 0, 1_000)
    error = assert_error(
        http.post(f"/v1/reservations/{reservation_id}/commit", json={"amounts": {"tokens": 5}}),
        409,
        "hold_closed",
    )
    assert "expired" in error["message"]
    assert frozen.quota.events().total == 0


def test_a_denied_reserve_is_429_like_a_denied_consume(frozen: Api, http: httpx.Client) -> None:
    held_id(reserve(http, amounts={"tokens": 700}, ttl=45))
    response = reserve(http, "user:bob", amounts={"tokens": 400})
    error = assert_error(response, 429, "quota_exceeded")
    # Not when the day ends: the hold lapses in 45 seconds, and then 400 fit.
    assert response.headers["Retry-After"] == "45"
    assert response.headers["RateLimit-Limit"] == "1000"
    assert response.headers["RateLimit-Remaining"] == "300"
    assert response.headers["RateLimit-Reset"] == str(SECONDS_TO_MIDNIGHT)
    details = error["details"]
    assert details["retry_after"] == 45
    assert [(b["subject"], b["metric"], b["reserved"]) for b in details["blocked_by"]] == [
        ("company:acme", "tokens", 700)
    ]
    assert details["decision"]["allowed"] is False
    assert tokens(frozen) == (0, 700, 300)  # nothing more held

    metrics = httpx.get(f"{frozen.url}/metrics").text
    assert 'operation="reserve",outcome="allowed"} 1.0' in metrics
    assert 'operation="reserve",outcome="denied"} 1.0' in metrics


def test_a_reserve_that_can_never_fit_has_no_retry_after(frozen: Api, http: httpx.Client) -> None:
    response = reserve(http, amounts={"tokens": 5_000})
    error = assert_error(response, 429, "quota_exceeded")
    assert "Retry-After" not in response.headers
    assert error["details"]["retry_after"] is None


# leases -------------------------------------------------------------------------------


def test_leases_acquire_deny_heartbeat_expire_and_release(frozen: Api, http: httpx.Client) -> None:
    assert frozen.clock is not None
    frozen.quota.set_limit("company:acme", "concurrent_requests", None, 1)
    response = http.post("/v1/leases", json={"subject": "user:alice", "ttl": 10})
    assert response.status_code == 201
    body = response.json()
    lease = body["lease"]
    assert (lease["subject"], lease["state"], lease["released_at"]) == ("user:alice", "held", None)
    assert body["decision"]["allowed"] is True
    assert response.headers["RateLimit-Remaining"] == "0"

    denied = http.post("/v1/leases", json={"subject": "user:bob"})
    error = assert_error(denied, 429, "quota_exceeded")
    assert denied.headers["Retry-After"] == "10"  # when the held lease lapses
    assert error["details"]["blocked_by"][0]["metric"] == "concurrent_requests"

    frozen.clock.advance(seconds=8)
    beat = http.post(f"/v1/leases/{lease['id']}/heartbeat", json={"ttl": 10})
    assert beat.status_code == 200
    assert beat.json()["expires_at"] == datetime(2026, 3, 10, 12, 0, 18, tzinfo=UTC).isoformat()
    frozen.clock.advance(seconds=8)
    assert http.post("/v1/leases", json={"subject": "user:bob"}).status_code == 429
    frozen.clock.advance(seconds=2)
    assert http.get(f"/v1/leases/{lease['id']}").json()["state"] == "expired"
    assert_error(http.post(f"/v1/leases/{lease['id']}/heartbeat"), 409, "hold_closed")

    bob = http.post("/v1/leases", json={"subject": "user:bob"}).json()["lease"]
    assert http.delete(f"/v1/leases/{bob['id']}").json() == {"released": True}
    assert http.delete(f"/v1/leases/{bob['id']}").json() == {"released": False}
    after = http.get(f"/v1/leases/{bob['id']}").json()
    assert after["state"] == "released"
    assert after["released_at"] == NOON.replace(second=18).isoformat()
    assert_error(
        http.post(f"/v1/leases/{bob['id']}/heartbeat", json={"ttl": 5}), 409, "hold_closed"
    )
    assert http.post("/v1/leases", json={"subject": "user:alice"}).status_code == 201


# roles --------------------------------------------------------------------------------


def test_a_member_holds_only_for_its_own_subject(frozen: Api) -> None:
    frozen.quota.set_limit("company:acme", "concurrent_requests", None, 10)
    with frozen.client() as admin:
        foreign_reservation = held_id(reserve(admin, "user:bob", amounts={"tokens": 1}))
        foreign_lease = admin.post("/v1/leases", json={"subject": "user:bob"}).json()["lease"]["id"]
    with frozen.client(frozen.key("member", "user:alice")) as member:
        own = held_id(reserve(member, amounts={"tokens": 1}))
        assert member.get(f"/v1/reservations/{own}").status_code == 200
        assert member.post(f"/v1/reservations/{own}/commit").status_code == 200
        assert member.delete(f"/v1/reservations/{own}").status_code == 200
        lease = member.post("/v1/leases", json={"subject": "user:alice"})
        assert lease.status_code == 201
        lease_id = lease.json()["lease"]["id"]
        assert member.post(f"/v1/leases/{lease_id}/heartbeat").status_code == 200
        assert member.delete(f"/v1/leases/{lease_id}").status_code == 200

        before = tokens(frozen)
        # Not for another subject, not even its own parent, and not on another's holds.
        for response in (
            reserve(member, "user:bob", amounts={"tokens": 1}),
            reserve(member, "company:acme", amounts={"tokens": 1}),
            member.post("/v1/leases", json={"subject": "user:bob"}),
            member.get(f"/v1/reservations/{foreign_reservation}"),
            member.post(f"/v1/reservations/{foreign_reservation}/commit"),
            member.delete(f"/v1/reservations/{foreign_reservation}"),
            member.get(f"/v1/leases/{foreign_lease}"),
            member.post(f"/v1/leases/{foreign_lease}/heartbeat"),
            member.delete(f"/v1/leases/{foreign_lease}"),
        ):
            assert_error(response, 403, "forbidden")
        assert tokens(frozen) == before
        assert frozen.quota.get_reservation(foreign_reservation).state.value == "held"
        assert frozen.quota.get_lease(foreign_lease).released_at is None


def test_service_keys_hold_for_anyone_and_staff_keys_for_no_one(frozen: Api) -> None:
    with frozen.client(frozen.key("service")) as service:
        reservation_id = held_id(reserve(service, "user:bob", amounts={"tokens": 1}))
        lease = service.post("/v1/leases", json={"subject": "company:acme"})
        assert lease.status_code == 201
        lease_id = lease.json()["lease"]["id"]
    with frozen.client(frozen.key("staff")) as staff:
        for response in (
            reserve(staff, amounts={"tokens": 1}),
            staff.post("/v1/leases", json={"subject": "user:alice"}),
            staff.get(f"/v1/reservations/{reservation_id}"),
            staff.post(f"/v1/reservations/{reservation_id}/commit"),
            staff.delete(f"/v1/reservations/{reservation_id}"),
            staff.get(f"/v1/leases/{lease_id}"),
            staff.post(f"/v1/leases/{lease_id}/heartbeat"),
            staff.delete(f"/v1/leases/{lease_id}"),
            # Refused before anything is looked up: no hint which ids exist.
            staff.get("/v1/reservations/unknown"),
            staff.delete("/v1/leases/unknown"),
        ):
            assert_error(response, 403, "forbidden")
    assert tokens(frozen) == (0, 1, 999)


ALL_OPERATIONS = [
    ("POST", "/v1/reservations", {"subject": "user:alice", "amounts": {"tokens": 1}}),
    ("GET", "/v1/reservations/{r}", None),
    ("POST", "/v1/reservations/{r}/commit", {"amounts": {"tokens": 1}}),
    ("DELETE", "/v1/reservations/{r}", None),
    ("POST", "/v1/leases", {"subject": "user:alice"}),
    ("GET", "/v1/leases/{l}", None),
    ("POST", "/v1/leases/{l}/heartbeat", {"ttl": 30}),
    ("DELETE", "/v1/leases/{l}", None),
]


def test_no_valid_key_is_401_and_changes_nothing(frozen: Api, http: httpx.Client) -> None:
    ids = {"r": held_id(reserve(http, amounts={"tokens": 5})), "l": "x"}
    ids["l"] = http.post("/v1/leases", json={"subject": "user:alice"}).json()["lease"]["id"]
    before = (tokens(frozen), frozen.quota.events().total)
    for method, path, body in ALL_OPERATIONS:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": ADMIN_KEY + "x"}):
            response = httpx.request(
                method, frozen.url + path.format(**ids), json=body, headers=headers
            )
            assert_error(response, 401, "unauthorized")
    assert (tokens(frozen), frozen.quota.events().total) == before
    assert frozen.quota.get_lease(ids["l"]).released_at is None


# not found and bad input --------------------------------------------------------------


def test_unknown_ids_are_404(http: httpx.Client) -> None:
    for method, path, body in ALL_OPERATIONS:
        if "{" not in path:
            continue
        response = http.request(method, path.format(r="nope", l="nope"), json=body)
        error = assert_error(response, 404, "not_found")
        assert error["details"]["field"] == "id"


def test_unknown_subjects_are_404_with_strict_subjects(make_api: ServerFactory) -> None:
    api = make_api(strict_subjects=True)
    with api.client() as http:
        for path in ("/v1/reservations", "/v1/leases"):
            assert_error(http.post(path, json={"subject": "user:ghost"}), 404, "not_found")
    assert api.quota.list_subjects().total == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/reservations", {"subject": "alice", "amounts": {"tokens": 1}}, "subject"),
        (
            "/v1/reservations",
            {"subject": "user:alice", "amounts": {"tokens": -1}},
            "amounts.tokens",
        ),
        ("/v1/reservations", {"subject": "user:alice", "amounts": {"nope": 1}}, "amounts.nope"),
        (
            "/v1/reservations",
            {"subject": "user:alice", "amounts": {"concurrent_requests": 1}},
            "amounts.concurrent_requests",
        ),
        ("/v1/reservations", {"subject": "user:alice", "ttl": 0}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "ttl": 0.5}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "ttl": 86_401}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "ttl": "60"}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "ttl": True}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "ttl": None}, "ttl"),
        ("/v1/reservations", {"subject": "user:alice", "resource": "deployment"}, "resource"),
        ("/v1/reservations", {"subject": "user:alice", "mode": "record"}, "mode"),
        ("/v1/reservations", {"amounts": {"tokens": 1}}, "subject"),
        ("/v1/leases", {"subject": "user:alice", "ttl": -5}, "ttl"),
        ("/v1/leases", {"subject": "user:alice", "resource": "deployment"}, "resource"),
        ("/v1/leases", {"subject": "user:alice", "amounts": {"tokens": 1}}, "amounts"),
        ("/v1/leases", {"subject": "user"}, "subject"),
        ("/v1/reservations/{r}/commit", {"amounts": {"tokens": "lots"}}, "amounts.tokens"),
        ("/v1/reservations/{r}/commit", {"tokens": 5}, "tokens"),
        ("/v1/leases/{l}/heartbeat", {"ttl": 100_000}, "ttl"),
        ("/v1/leases/{l}/heartbeat", {"ttl": "soon"}, "ttl"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_changes_nothing(
    frozen: Api, http: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    ids = {"r": held_id(reserve(http, amounts={"tokens": 5}))}
    ids["l"] = http.post("/v1/leases", json={"subject": "user:alice"}).json()["lease"]["id"]
    before = (tokens(frozen), frozen.quota.events().total)
    error = assert_error(http.post(path.format(**ids), json=body), 422, "validation_error")
    assert error["details"]["field"] == field, error
    assert (tokens(frozen), frozen.quota.events().total) == before
    assert frozen.quota.get_lease(ids["l"]).expires_at == NOON.replace(minute=1)


def test_ids_too_long_are_422(http: httpx.Client) -> None:
    long_id = "x" * 65
    for method, path, body in ALL_OPERATIONS:
        if "{" not in path:
            continue
        response = http.request(method, path.format(r=long_id, l=long_id), json=body)
        error = assert_error(response, 422, "validation_error")
        assert error["details"]["field"] in ("reservation_id", "lease_id")


def test_the_openapi_document_lists_every_operation(frozen: Api) -> None:
    paths = httpx.get(f"{frozen.url}/openapi.json").json()["paths"]
    created = paths["/v1/reservations"]["post"]["responses"]
    assert {"201", "401", "403", "404", "422", "429"} <= set(created)
    assert set(paths["/v1/reservations/{reservation_id}"]) == {"get", "delete"}
    assert "409" in paths["/v1/reservations/{reservation_id}/commit"]["post"]["responses"]
    assert "429" in paths["/v1/leases"]["post"]["responses"]
    assert set(paths["/v1/leases/{lease_id}"]) == {"get", "delete"}
    assert "409" in paths["/v1/leases/{lease_id}/heartbeat"]["post"]["responses"]


# races --------------------------------------------------------------------------------

CALLERS = 30
PER_HOLD = 70  # 14 of these fit in 1 000, with 20 to spare


@pytest.mark.slow
def test_thirty_threads_reserving_never_oversubscribe(frozen: Api) -> None:
    barrier = threading.Barrier(CALLERS, timeout=30)
    statuses: Counter[int] = Counter()
    held: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        subject = "user:alice" if index % 2 else "user:bob"
        try:
            with frozen.client() as client:
                barrier.wait()
                response = reserve(client, subject, amounts={"tokens": PER_HOLD})
            with lock:
                statuses[response.status_code] += 1
                if response.status_code == 201:
                    held.append(response.json()["reservation"]["amounts"]["tokens"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert statuses == {201: 1_000 // PER_HOLD, 429: CALLERS - 1_000 // PER_HOLD}
    assert sum(held) == 980
    assert tokens(frozen) == (0, 980, 20)


def test_holds_on_a_resource_answer_to_its_quota(api: Api) -> None:
    api.quota.set_resource_quota(
        "deployment:llama",
        {"default_rules": [{"metric": "concurrent_requests", "limit": 1}]},
    )
    with api.client() as http:
        body = {"subject": "user:alice", "resource": "deployment:llama"}
        first = http.post("/v1/leases", json=body)
        assert first.status_code == 201
        assert first.json()["lease"]["resource"] == "deployment:llama"
        assert http.post("/v1/leases", json=body).status_code == 429
        held = http.post("/v1/reservations", json={**body, "amounts": {"tokens": 5}})
        assert held.json()["reservation"]["resource"] == "deployment:llama"
