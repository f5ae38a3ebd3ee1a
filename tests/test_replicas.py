"""Replicas (contract §10): several ``tokenquota serve`` on one store behave as one.

A deployment scales out by running more processes behind a load balancer,
each with its own connections and memory. The guarantees must hold across
them as within one: the limit is one limit (no overspend, and no underspend
either), every acknowledged consume is in the ledger once, and a replica
killed mid-request loses nothing acknowledged and double-charges nothing that
a client retries elsewhere with its idempotency key.

The backend is a parameter: a new shared store adds its name to
``REPLICA_BACKENDS`` and its flags to ``store_args``; the tests stay as they are.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.replicas import (
    ADMIN_KEY,
    Fleet,
    Replica,
    client,
    ledger,
    stored_event_keys,
    used,
)

pytestmark = pytest.mark.slow

# "redis" needs only its name here: store_args already knows its flags.
REPLICA_BACKENDS = ["postgres", "redis"]
REPLICAS = 3
COMPANY = "company:acme"
JOIN_TIMEOUT_SECONDS = 300.0  # 2 CI cores run the clients and all three replicas
BARRIER_TIMEOUT_SECONDS = 120.0


def store_args(backend: str, fixture: Callable[[str], Any]) -> list[str]:
    """The ``tokenquota serve`` flags that put a replica on the shared store of ``backend``.

    ``fixture(name)`` is ``request.getfixturevalue``: each backend asks only for
    the services it runs on, so a missing Redis never skips the PostgreSQL run.
    """
    if backend == "postgres":
        return ["--db", fixture("postgres_url")]
    if backend == "redis":
        return ["--db", fixture("postgres_url"), "--redis", fixture("redis_url")]
    raise AssertionError(f"unknown replica backend {backend}")


@pytest.fixture(params=REPLICA_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Overrides the suite's ``backend``: only stores that several processes share."""
    return str(request.param)


@pytest.fixture
def shared_store(backend: str, request: pytest.FixtureRequest) -> list[str]:
    return store_args(backend, request.getfixturevalue)


def admin(replica: Replica) -> httpx.Client:
    return client(replica.url, ADMIN_KEY)


def put_ok(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.put(path, json=body)
    assert response.status_code == 200, f"PUT {path}: {response.status_code} {response.text}"
    result: dict[str, Any] = response.json()
    return result


def set_up_company(replicas: list[Replica], users: list[str], limits: list[Any]) -> str:
    """The company's limits, its users and a service key, each written through another replica.

    Spread on purpose: a replica must enforce a limit another one set, for a
    user a third one created, and accept a key none of them made itself.
    """
    clients = [admin(r) for r in replicas]
    try:
        rules = [{"metric": "tokens", "window": w, "limit": v} for w, v in limits]
        put_ok(clients[0], f"/v1/subjects/{COMPANY}/limits", {"limits": rules})
        created = clients[1 % len(clients)].post("/v1/keys", json={"role": "service"})
        assert created.status_code in (200, 201), created.text
        for i, user in enumerate(users):
            put_ok(clients[i % len(clients)], f"/v1/subjects/{user}", {"parents": [COMPANY]})
        key: str = created.json()["key"]
        return key
    finally:
        for http in clients:
            http.close()


@dataclass(frozen=True)
class Ack:
    """A consume the service acknowledged: 200 with an event id."""

    key: str
    event_id: int
    tokens: int
    replica: str
    replayed: bool = False


@dataclass
class Outcomes:
    """What the clients saw, gathered from every thread under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: list[Ack] = field(default_factory=list)
    denied: Counter[str] = field(default_factory=Counter)  # per replica
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (replica, key, error)
    unexpected: list[str] = field(default_factory=list)  # answers no correct service gives
    errors: list[str] = field(default_factory=list)  # exceptions in the client threads
    tokens: int = 0  # the admitted total so far

    def add(self, ack: Ack) -> int:
        """Record ``ack``; returns the admitted total with it."""
        with self.lock:
            self.acks.append(ack)
            self.tokens += ack.tokens
            return self.tokens

    def count(self) -> int:
        with self.lock:
            return len(self.acks)

    def problems(self) -> list[str]:
        with self.lock:
            return self.unexpected + self.errors


def start_threads(
    count: int, outcomes: Outcomes, work: Callable[[int, threading.Barrier], None]
) -> list[threading.Thread]:
    """``count`` threads running ``work(i, barrier)``; an exception in one is recorded, not lost."""
    barrier = threading.Barrier(count, timeout=BARRIER_TIMEOUT_SECONDS)

    def guarded(index: int) -> None:
        try:
            work(index, barrier)
        except BaseException as exc:  # reported by the test, not swallowed by the thread
            barrier.abort()
            with outcomes.lock:
                outcomes.errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=guarded, args=(i,), name=f"client-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"clients still running after {JOIN_TIMEOUT_SECONDS} s: {stuck[:10]}"


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``condition`` (the only waiting these tests do) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def consume_body(user: str, tokens: int, key: str) -> dict[str, Any]:
    return {"subject": user, "amounts": {"tokens": tokens}, "idempotency_key": key}


def acked(response: httpx.Response, key: str, tokens: int, replica: str) -> Ack:
    """The Ack in a 200, checked to be the decision for the request that was sent."""
    body = response.json()
    assert body["allowed"] is True, body
    assert body["amounts"]["tokens"] == tokens, body
    assert isinstance(body["event_id"], int), body
    return Ack(key, body["event_id"], tokens, replica, bool(body["replayed"]))


def assert_ledger_is(
    replicas: list[Replica], service_key: str, db_url: str, acks: list[Ack]
) -> None:
    """Every replica exports the same ledger: exactly the acknowledged events, each once."""
    expected = {a.key: (a.event_id, a.tokens) for a in acks}
    assert len(expected) == len(acks), "a key was acknowledged twice"
    exports = {r.name: ledger(r.url, service_key, COMPANY) for r in replicas}
    for name, events in exports.items():
        per_key = Counter(e["idempotency_key"] for e in events)
        twice = {k: n for k, n in per_key.items() if n > 1}
        assert not twice, f"{name}: keys charged more than once: {twice}"
        got = {e["idempotency_key"]: (e["id"], e["amounts"]["tokens"]) for e in events}
        missing = expected.keys() - got.keys()
        extra = got.keys() - expected.keys()
        assert not missing, f"{name}: acknowledged but not in the ledger: {sorted(missing)[:20]}"
        assert not extra, f"{name}: in the ledger but never acknowledged: {sorted(extra)[:20]}"
        wrong = {k: (expected[k], got[k]) for k in expected if expected[k] != got[k]}
        assert not wrong, f"{name}: (event id, tokens) acknowledged vs ledger: {wrong}"
    # Straight from the table too, after the exports (which move any events a backend
    # still buffers, e.g. Redis streams, into it): one row per key, nothing else.
    rows = stored_event_keys(db_url)
    twice = {k: n for k, n in rows.items() if n > 1}
    assert not twice, f"events table: rows per key above one: {twice}"
    assert rows.keys() == expected.keys(), (
        f"events table: keys missing {sorted(expected.keys() - rows.keys())[:20]}, "
        f"unexpected {sorted(map(str, rows.keys() - expected.keys()))[:20]}"
    )


# the race for one limit -------------------------------------------------------------
RACE_CLIENTS = 200
RACE_LIMIT = 500
MAX_TOKENS = 7
# A client's admissions are bounded by the limit and a refusal of more than 1 is
# followed by a try of 1, so a correct service stops every client well within this.
RACE_MAX_TRIES = 2 * RACE_LIMIT + 2


def test_replicas_admit_exactly_the_company_limit_between_them(
    fleet: Fleet, shared_store: list[str], postgres_url: str
) -> None:
    """200 clients, a third on each replica, race for one company's 500 tokens.

    Each replica decides alone from what it reads in the store; if any of them
    decided from a stale or private view, the company would get more than 500.
    """
    replicas = fleet.start(REPLICAS, shared_store)
    users = [f"user:racer{i:03d}" for i in range(RACE_CLIENTS)]
    # A day window, as products set it, and a lifetime one with the same cap, so that
    # a run across midnight UTC (a fresh day window) cannot admit more.
    service_key = set_up_company(replicas, users, [("day", RACE_LIMIT), ("total", RACE_LIMIT)])
    outcomes = Outcomes()

    def racer(index: int, barrier: threading.Barrier) -> None:
        """Spend 1-7 tokens at a time for its own user, 1 after a refusal, until 1 is refused.

        A client stops only when a single token was refused, i.e. the company
        was at its limit then; so with no overspend the total ends exactly at it.
        """
        replica = replicas[index % len(replicas)]  # round-robin, as a balancer would
        rng = random.Random(index)
        tokens = rng.randint(1, MAX_TOKENS)
        with client(replica.url, service_key) as http:
            barrier.wait()
            for attempt in range(RACE_MAX_TRIES):
                key = f"race-{index}-{attempt}"
                response = http.post("/v1/consume", json=consume_body(users[index], tokens, key))
                if response.status_code == 200:
                    if outcomes.add(acked(response, key, tokens, replica.name)) > RACE_LIMIT:
                        return  # overspent already: the test fails, no need to go on
                    tokens = rng.randint(1, MAX_TOKENS)
                    continue
                if response.status_code == 429:
                    assert response.json()["error"]["code"] == "quota_exceeded", response.text
                    with outcomes.lock:
                        outcomes.denied[replica.name] += 1
                    if tokens == 1:
                        return
                    tokens = 1
                    continue
                with outcomes.lock:
                    outcomes.unexpected.append(
                        f"{replica.name} {key}: {response.status_code} {response.text}"
                    )
                return
            with outcomes.lock:
                outcomes.unexpected.append(f"client {index}: not refused in {RACE_MAX_TRIES} tries")

    started = time.monotonic()
    join_all(start_threads(RACE_CLIENTS, outcomes, racer))
    elapsed = time.monotonic() - started

    admitted: Counter[str] = Counter()
    for ack in outcomes.acks:
        admitted[ack.replica] += ack.tokens
    total = sum(admitted.values())
    print(
        f"\nrace: {len(outcomes.acks)} consumes admitted, tokens per replica {dict(admitted)}, "
        f"refusals per replica {dict(outcomes.denied)}, {elapsed:.1f} s"
    )
    assert total <= RACE_LIMIT, (
        f"overspend: {total} tokens admitted against one limit of {RACE_LIMIT} "
        f"(per replica: {dict(admitted)})"
    )
    assert not outcomes.problems(), outcomes.problems()[:20]
    assert total == RACE_LIMIT, f"every client was refused 1 token, yet only {total} admitted"
    assert_ledger_is(replicas, service_key, postgres_url, outcomes.acks)
    for replica in replicas:
        usage = used(replica.url, service_key, COMPANY)
        assert usage[("tokens", "day")] == RACE_LIMIT, (replica.name, usage)
        assert usage[("tokens", "total")] == RACE_LIMIT, (replica.name, usage)


# a replica killed under load --------------------------------------------------------
KILL_CLIENTS = 24
ACKS_BEFORE_KILL = 150
ACKS_AFTER_KILL = 150
# Each replica tried up to three times; with one replica dead a request needs at most two.
MAX_ATTEMPTS = 3 * REPLICAS
LOAD_TIMEOUT_SECONDS = 180.0


def test_a_killed_replica_loses_no_acknowledged_consume_and_retries_count_once(
    fleet: Fleet, shared_store: list[str], postgres_url: str
) -> None:
    """SIGKILL one of three replicas under load; clients fail over with their keys.

    An acknowledged consume must survive its replica's death (it was committed
    before the answer), and a request cut off mid-flight, charged or not, must
    be charged exactly once when retried on another replica.
    """
    replicas = fleet.start(REPLICAS, shared_store)
    victim = replicas[1]
    users = [f"user:worker{i:02d}" for i in range(KILL_CLIENTS)]
    # A limit nobody reaches: every consume takes the full enforcing path and is admitted.
    service_key = set_up_company(replicas, users, [("total", 10**9)])
    outcomes = Outcomes()
    stop = threading.Event()

    def worker(index: int, barrier: threading.Barrier) -> None:
        """Consume with a fresh idempotency key each time, round-robin over the replicas.

        A call that fails without an answer (refused, reset, cut off) may or may
        not have been charged; the client sends the same request, same key, to
        the next replica, as a client behind a load balancer would.
        """
        clients = [client(r.url, service_key) for r in replicas]
        try:
            barrier.wait()
            sequence = 0
            while not stop.is_set():
                key = f"kill-{index}-{sequence}"
                tokens = (index + sequence) % MAX_TOKENS + 1
                body = consume_body(users[index], tokens, key)
                first = (index + sequence) % len(replicas)
                sequence += 1
                for attempt in range(MAX_ATTEMPTS):
                    target = (first + attempt) % len(replicas)
                    try:
                        response = clients[target].post("/v1/consume", json=body)
                    except httpx.TransportError as exc:
                        with outcomes.lock:
                            outcomes.failures.append(
                                (replicas[target].name, key, type(exc).__name__)
                            )
                        continue
                    if response.status_code == 200:
                        outcomes.add(acked(response, key, tokens, replicas[target].name))
                        break
                    with outcomes.lock:
                        outcomes.unexpected.append(
                            f"{replicas[target].name} {key}: {response.status_code} {response.text}"
                        )
                    return
                else:
                    with outcomes.lock:
                        outcomes.unexpected.append(f"{key}: no answer in {MAX_ATTEMPTS} attempts")
                    return
        finally:
            for http in clients:
                http.close()

    def load_reached(count: int) -> Callable[[], bool]:
        # Also true when something broke, so the test reports it instead of timing out.
        return lambda: outcomes.count() >= count or bool(outcomes.problems())

    threads = start_threads(KILL_CLIENTS, outcomes, worker)
    try:
        wait_for(load_reached(ACKS_BEFORE_KILL), "load before the kill", LOAD_TIMEOUT_SECONDS)
        victim.kill()  # SIGKILL, mid-load: whatever it was doing is cut off
        at_kill = outcomes.count()
        wait_for(
            load_reached(at_kill + ACKS_AFTER_KILL), "load after the kill", LOAD_TIMEOUT_SECONDS
        )
    finally:
        stop.set()
        join_all(threads)

    acks = outcomes.acks
    by_victim = [a for a in acks if a.replica == victim.name]
    failed_at = Counter(replica for replica, _, _ in outcomes.failures)
    print(
        f"\nkill: {len(acks)} consumes acknowledged ({at_kill} before the kill, "
        f"{len(by_victim)} by {victim.name}), failed calls {dict(failed_at)} "
        f"{dict(Counter(error for _, _, error in outcomes.failures))}, "
        f"{sum(a.replayed for a in acks)} answered by a replay of a charge the victim made"
    )
    assert not outcomes.problems(), outcomes.problems()[:20]
    assert by_victim, f"{victim.name} acknowledged nothing before it was killed"
    assert failed_at, "no call failed: the kill did not interrupt the clients"
    assert set(failed_at) == {victim.name}, f"calls failed on live replicas: {dict(failed_at)}"

    survivors = [r for r in replicas if r is not victim]
    assert_ledger_is(survivors, service_key, postgres_url, acks)
    charged = sum(a.tokens for a in acks)
    for replica in survivors:
        assert used(replica.url, service_key, COMPANY)[("tokens", "total")] == charged

    # Back on its feet, the killed replica sees the same ledger and counts, and a late
    # retry of something it acknowledged before dying is a replay there, not a charge.
    revived = fleet.restart(victim)
    replicas = [*survivors, revived]
    ack = by_victim[-1]
    user = users[int(ack.key.split("-")[1])]
    with client(revived.url, service_key) as http:
        again = http.post("/v1/consume", json=consume_body(user, ack.tokens, ack.key))
    assert again.status_code == 200, again.text
    assert (again.json()["event_id"], again.json()["replayed"]) == (ack.event_id, True)
    assert used(revived.url, service_key, COMPANY)[("tokens", "total")] == charged
    assert_ledger_is(replicas, service_key, postgres_url, acks)


# a rollout on an empty database ------------------------------------------------------
def test_replicas_started_together_on_a_fresh_store_all_come_up(
    fleet: Fleet, backend: str, request: pytest.FixtureRequest
) -> None:
    """A deployment rolled out on an empty database starts every replica at once.

    migrate.upgrade promises that processes starting together queue for the
    migration; each replica must come up, none may crash on the others' tables.
    """
    # postgres_url is migrated already (tests/services.py): this test needs it empty.
    empty = {"postgres_url": "empty_postgres_url"}
    store = store_args(backend, lambda name: request.getfixturevalue(empty.get(name, name)))
    replicas = fleet.start(REPLICAS, store)
    assert all(replica.ready() for replica in replicas)


# one request on every replica at once ------------------------------------------------
DUPLICATED_REQUESTS = 30


def test_one_request_sent_to_every_replica_at_once_is_charged_once(
    fleet: Fleet, shared_store: list[str], postgres_url: str
) -> None:
    """A client that cannot tell whether a call landed sends it again elsewhere, maybe
    while the first copy still runs. The kill test meets that case only when the kill
    falls between a commit and its answer; here every request races itself on purpose.
    """
    replicas = fleet.start(REPLICAS, shared_store)
    users = [f"user:twin{i:02d}" for i in range(DUPLICATED_REQUESTS)]
    service_key = set_up_company(replicas, users, [("total", 10**9)])
    outcomes = Outcomes()

    def copy(index: int, barrier: threading.Barrier) -> None:
        """One copy of request ``index // REPLICAS``, to replica ``index % REPLICAS``."""
        request, target = divmod(index, len(replicas))
        key, tokens = f"twin-{request}", request % MAX_TOKENS + 1
        with client(replicas[target].url, service_key) as http:
            barrier.wait()
            response = http.post("/v1/consume", json=consume_body(users[request], tokens, key))
        if response.status_code == 200:
            outcomes.add(acked(response, key, tokens, replicas[target].name))
            return
        with outcomes.lock:
            outcomes.unexpected.append(f"{key}: {response.status_code} {response.text}")

    join_all(start_threads(DUPLICATED_REQUESTS * len(replicas), outcomes, copy))

    assert not outcomes.problems(), outcomes.problems()[:20]
    copies: dict[str, list[Ack]] = {}
    for ack in outcomes.acks:
        copies.setdefault(ack.key, []).append(ack)
    assert len(copies) == DUPLICATED_REQUESTS
    for key, answers in copies.items():
        assert len({a.event_id for a in answers}) == 1, f"{key}: several events {answers}"
        charged = [a for a in answers if not a.replayed]
        assert len(charged) == 1, f"{key}: charged {len(charged)} times: {answers}"
    firsts = [next(a for a in answers if not a.replayed) for answers in copies.values()]
    assert_ledger_is(replicas, service_key, postgres_url, firsts)
    total = sum(a.tokens for a in firsts)
    for replica in replicas:
        assert used(replica.url, service_key, COMPANY)[("tokens", "total")] == total


# retries after a kill, once the limit is reached -------------------------------------
FULL_CLIENTS = 12
FULL_LIMIT = 1_200
ACKS_BEFORE_FULL_KILL = 60


def test_retries_after_a_kill_answer_their_admission_though_the_limit_was_reached(
    fleet: Fleet, shared_store: list[str], postgres_url: str
) -> None:
    """SIGKILL a replica mid-load, let the others fill the limit, then retry every key.

    A retry of an admitted request must answer its original admission (issue
    11, item 6): 200 with the first answer's figures, never 429, although the
    limit is now reached. A request the kill cut off may or may not have been
    charged: if the ledger has it, its retry is that admission; if not, 429.
    """
    replicas = fleet.start(REPLICAS, shared_store)
    victim = replicas[1]
    survivors = [r for r in replicas if r is not victim]
    users = [f"user:filler{i:02d}" for i in range(FULL_CLIENTS)]
    service_key = set_up_company(replicas, users, [("total", FULL_LIMIT)])
    outcomes = Outcomes()
    answers: dict[str, dict[str, Any]] = {}  # key -> the 200 body first acknowledged
    cut: dict[str, dict[str, Any]] = {}  # key -> the request a failed call carried

    def worker(index: int, barrier: threading.Barrier) -> None:
        """Consume until refused at one token: then the company's limit is reached."""
        clients = [client(r.url, service_key) for r in replicas]
        try:
            barrier.wait()
            sequence, tokens = 0, index % MAX_TOKENS + 1
            while True:
                key = f"full-{index}-{sequence}"
                body = consume_body(users[index], tokens, key)
                target = (index + sequence) % len(replicas)
                sequence += 1
                try:
                    response = clients[target].post("/v1/consume", json=body)
                except httpx.TransportError as exc:
                    with outcomes.lock:  # retried after the limit is reached, below
                        outcomes.failures.append((replicas[target].name, key, type(exc).__name__))
                        cut[key] = body
                    continue
                if response.status_code == 200:
                    outcomes.add(acked(response, key, tokens, replicas[target].name))
                    with outcomes.lock:
                        answers[key] = response.json()
                    tokens = (tokens + index) % MAX_TOKENS + 1
                elif response.status_code == 429 and tokens > 1:
                    tokens = 1
                elif response.status_code == 429:
                    return
                else:
                    with outcomes.lock:
                        outcomes.unexpected.append(f"{key}: {response.status_code} {response.text}")
                    return
        finally:
            for http in clients:
                http.close()

    threads = start_threads(FULL_CLIENTS, outcomes, worker)
    try:
        wait_for(
            lambda: outcomes.count() >= ACKS_BEFORE_FULL_KILL or bool(outcomes.problems()),
            "load before the kill",
            LOAD_TIMEOUT_SECONDS,
        )
        victim.kill()  # SIGKILL, mid-load
    finally:
        join_all(threads)
    assert not outcomes.problems(), outcomes.problems()[:20]
    assert any(a.replica == victim.name for a in outcomes.acks), "the victim admitted nothing"
    assert cut, "no call failed: the kill did not interrupt the clients"
    failed_at = {replica for replica, _, _ in outcomes.failures}
    assert failed_at == {victim.name}, f"calls failed on live replicas: {failed_at}"
    for replica in survivors:
        assert used(replica.url, service_key, COMPANY)[("tokens", "total")] == FULL_LIMIT

    in_ledger = {
        e["idempotency_key"]: e["id"] for e in ledger(survivors[0].url, service_key, COMPANY)
    }
    charged_unanswered = 0
    with (
        client(survivors[0].url, service_key) as first,
        client(survivors[1].url, service_key) as second,
    ):
        for i, (key, answer) in enumerate(sorted(answers.items())):
            user = answer["subject"]
            tokens = int(answer["amounts"]["tokens"])
            again = (first, second)[i % 2].post("/v1/consume", json=consume_body(user, tokens, key))
            assert again.status_code == 200, f"{key}: {again.status_code} {again.text}"
            replay = again.json()
            assert replay["replayed"] is True, replay
            assert {**replay, "replayed": False} == {**answer, "replayed": False}, key
        for key, body in sorted(cut.items()):
            again = first.post("/v1/consume", json=body)
            if key in in_ledger:  # charged, but the answer died with the victim
                charged_unanswered += 1
                assert again.status_code == 200, f"{key}: {again.status_code} {again.text}"
                assert (again.json()["event_id"], again.json()["replayed"]) == (
                    in_ledger[key],
                    True,
                )
            else:
                assert again.status_code == 429, f"{key}: {again.status_code} {again.text}"
    print(
        f"\nfull: {len(answers)} admitted, {len(cut)} calls cut off, "
        f"{charged_unanswered} of them charged before the kill; all retried after the limit"
    )
    assert in_ledger.keys() == answers.keys() | {k for k in cut if k in in_ledger}
    for replica in survivors:
        assert used(replica.url, service_key, COMPANY)[("tokens", "total")] == FULL_LIMIT
