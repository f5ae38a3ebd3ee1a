"""The Redis backend: hot state in Redis, everything else in the SQL store.

Counters, holds, leases, grant balances, idempotency records and the newest
ledger events live in Redis and change only inside ``step.lua``, one atomic
script per operation (per hash slot on a cluster). Subjects, limits, plans,
keys, the audit log and the ledger itself stay in the SQL database: a mover
copies events from the Redis streams into it in batches, idempotently (the
event id is assigned in Redis and is the primary key in SQL), and
``rebuild`` restores Redis from that ledger after Redis loses its data.

docs/redis.md states what each failure loses.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.bounds import grant_too_large, too_large
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
    blocks,
    capacity_refuses,
    decide,
)
from tokenquota.domain.errors import (
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    StoreUnreachable,
    display,
)
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
    check_extendable,
)
from tokenquota.domain.ledger import CounterKey, Event, increments, usage_kind
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page, RuleSet, StaleConfig
from tokenquota.storage.redis.answers import CheckPlace, WalletPlace, first_answer, plan_json
from tokenquota.storage.redis.layout import (
    CLUSTER_SHARDS,
    Layout,
    Reply,
    Step,
    Steps,
    parse_reading,
    parse_wallet,
    split,
)
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.store import SqlStore, _event, _grant

log = logging.getLogger("tokenquota.redis")

STEP_LUA = files("tokenquota.storage.redis").joinpath("step.lua").read_text()
MOVE_BATCH = 500
MOVE_INTERVAL = 0.2  # seconds between mover passes
# A capacity test (SPEC section 6) is checked by comparing what it read with
# what the script finds; a busy resource may need a few rounds.
MAX_ROUNDS = 50
BACK_OFF_CAP = 0.1  # seconds: the longest pause between two rounds
# How long a replica serves limits from its cache before asking Redis whether
# they changed. Reads may lag by this much; decisions never do (see _cached).
CONFIG_TTL = 1.0
# In a subject's grants hash (grant id -> what is left), the sum of every grant
# it was ever given: what the 63-bit bound is checked on. Grant ids are hex, so
# no grant can take this name.
GRANTED = "+granted"
MIXED = "mixed"  # a plan read from two cache versions: always stale


def _connect(url: str) -> tuple[Any, bool, str]:
    """A client for ``url`` (standalone or cluster, found by asking) and the key prefix.

    ``?prefix=NAME`` keeps several stores apart in one Redis (default ``tq``).
    """
    import redis
    from redis.cluster import RedisCluster

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "tq")
    clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
    try:
        client: Any = redis.Redis.from_url(clean, socket_timeout=10, socket_connect_timeout=5)
        info = client.info("cluster")
        if info.get("cluster_enabled"):
            client.close()
            client = RedisCluster.from_url(clean, socket_timeout=10, socket_connect_timeout=5)
            return client, True, prefix
        return client, False, prefix
    except redis.RedisError as exc:
        raise StoreUnreachable(f"Redis did not answer: {exc}") from exc


@dataclass
class _Op:
    """One operation's steps, and where each check's and wallet's answer comes back."""

    steps: Steps
    checks: list[tuple[Step, int, list[int], bool] | None] = field(default_factory=list)
    wallets: list[tuple[Step, int, SubjectRef, list[Grant]]] = field(default_factory=list)


class KeyspaceTaken(StoreUnavailable):
    """The Redis keyspace belongs to another deployment: this store will not start."""

    code = "redis_keyspace_taken"


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _one_operation(
    method: Callable[Concatenate[RedisStore, _P], _T],
) -> Callable[Concatenate[RedisStore, _P], _T]:
    """An enforcing call: the thread's next call starts from the version it plans on."""

    @functools.wraps(method)
    def call(self: RedisStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._local.version = None

    return call


class RedisStore(SqlStore):
    def __init__(
        self,
        url: str,
        redis_url: str,
        tz: ZoneInfo | None,
        *,
        move_timezone: bool = False,
        migrate: bool = True,
    ) -> None:
        self.redis, self.cluster, prefix = _connect(redis_url)
        self.layout = Layout(prefix, CLUSTER_SHARDS if self.cluster else 1)
        self._step = self.redis.register_script(STEP_LUA)
        self._config_lock = threading.Lock()
        self._config_version = ""
        self._config_entries: dict[Any, Any] = {}
        self._config_checked = -math.inf
        self._local = threading.local()
        self._slot_of: Any = None
        if self.cluster:
            from redis.crc import key_slot

            self._slot_of = lambda key: key_slot(key.encode())
        self._warn_on_eviction()
        try:
            super().__init__(url, tz, move_timezone=move_timezone, migrate=migrate)
        except BaseException:
            self.redis.close()
            raise
        try:
            self._stamp(prefix)
            self._open_epoch()
        except BaseException:
            self.redis.close()
            super().close()
            raise
        self._stop = threading.Event()
        self._mover = threading.Thread(target=self._move_forever, name="tq-mover", daemon=True)
        self._mover.start()

    # lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        if self._stop.is_set():
            return  # closed already: a quota may be closed twice
        self._stop.set()
        self._mover.join(timeout=10)
        try:
            self.flush()
        except StoreUnavailable as exc:  # the next opener moves what is left
            log.warning("could not move the last events to the ledger: %s", exc)
        self.redis.close()
        super().close()

    def ping(self) -> None:
        super().ping()
        self._call(lambda: self.redis.ping())

    def _call(self, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnreachable(f"Redis did not answer: {exc}") from exc

    def _warn_on_eviction(self) -> None:
        """An evicted counter reads as zero: say so at start if Redis may evict."""
        import redis

        try:
            policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.RedisError:  # CONFIG is often disabled on managed Redis
            return
        if policy not in (None, "noeviction", b"noeviction"):
            log.warning(
                "Redis maxmemory-policy is %s: set noeviction, or an evicted counter "
                "will be read as zero (docs/redis.md)",
                policy,
            )

    def _deployment(self) -> str:
        """This deployment's id, kept in the SQL catalog and made on first use."""
        # The exclusive SQL write lock, so two first starts agree on one id (no
        # configuration bump: no limit changes).
        with super()._tx(write=True) as conn:
            return _deployment_id(conn)

    def _stamp(self, prefix: str) -> None:
        """Claim the keyspace under our prefix, or refuse one that another deployment owns.

        Two deployments on one keyspace would move each other's events into
        their own ledgers and count each other's usage (issue 11, item 7).
        An unstamped keyspace is ours to claim, unless it holds an epoch our
        SQL database did not write: then a deployment from before stamps
        writes there.
        """
        self.deployment_id = self._deployment()
        with super()._tx() as conn:
            epoch = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "redis_epoch")
            ).scalar()
        key = self.layout.deployment()
        claimed = self._call(lambda: self.redis.set(key, self.deployment_id, nx=True))
        raw = self._call(lambda: self.redis.get(key))
        owner = raw.decode() if raw else self.deployment_id
        if claimed:
            theirs = self._call(lambda: self.redis.get(self.layout.epoch()))
            if theirs is not None and theirs.decode() != epoch:
                self._call(lambda: self.redis.delete(key))  # not ours to claim after all
                owner = f"an unstamped deployment (Redis epoch {theirs.decode()})"
        if owner != self.deployment_id:
            raise KeyspaceTaken(
                f"the Redis keyspace under prefix {prefix!r} belongs to deployment {owner}, "
                f"not to this one ({self.deployment_id}, the database this store opened): "
                "give each deployment its own keyspace with ?prefix=NAME in the Redis URL"
            )

    def _open_epoch(self) -> None:
        """Tell a new Redis from one that lost our data.

        The SQL store remembers the epoch it wrote into Redis. No epoch in SQL:
        this is the first start on Redis, so fill Redis from the ledger. An
        epoch in SQL that Redis lacks: Redis lost its data; every enforcing
        operation then answers 503 (the scripts find no event sequence) until
        ``tokenquota rebuild`` restores it.
        """
        # The exclusive SQL write lock, but no configuration bump: opening changes
        # no limit, and a bump per starting replica would send every running
        # request back to plan again.
        with super()._tx(write=True) as conn:
            stored = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "redis_epoch")
            ).scalar()
            if stored is None:
                self._rebuild(conn)
                return
        current = self._call(lambda: self.redis.get(self.layout.epoch()))
        if current is None or current.decode() != stored:
            log.error("Redis has lost tokenquota's data: run `tokenquota rebuild` to restore it")

    def _set_epoch(self, conn: Connection) -> None:
        epoch = uuid.uuid4().hex
        conn.execute(t.meta.delete().where(t.meta.c.key == "redis_epoch"))
        conn.execute(t.meta.insert().values(key="redis_epoch", value=epoch))
        self._call(lambda: self.redis.set(self.layout.epoch(), epoch))
        # A time-zone move rebuilds while the SQL store opens, before _stamp has
        # read our id: read it here, under the write lock this caller holds.
        deployment = _deployment_id(conn)
        self._call(lambda: self.redis.set(self.layout.deployment(), deployment))

    # running steps -------------------------------------------------------------
    def _run(self, step: Step, now: datetime, *, dry: bool = False) -> Reply:
        keys, argv = step.keys, step.argv(to_micros(now), dry=dry)
        return Reply.parse(self._call(lambda: self._step(keys=keys, args=[argv])))

    def _execute(self, op: _Op, now: datetime, *, dry: bool = False) -> list[Reply]:
        """Run every step; on a cluster, undo earlier steps when a later one refuses.

        A refused step's successors run dry, so the answer still reports every limit.
        """
        steps = op.steps.ordered()
        replies: list[Reply] = []
        for i, step in enumerate(steps):
            if "idem" in step.spec:  # it keeps what the steps before it read (see answers.py)
                step.spec["idem"]["pre"] = json.dumps([[r.readings, r.wallets] for r in replies])
            reply = self._run(step, now, dry=dry)
            replies.append(reply)
            if reply.status == "ok":
                continue
            replies += [self._run(rest, now, dry=True) for rest in steps[i + 1 :]]
            for done, answer in zip(steps[:i], replies[:i], strict=True):
                if not dry:
                    self._undo(done, answer, now)
            break
        return replies

    def _undo(self, step: Step, reply: Reply, now: datetime) -> None:
        """Reverse one cluster step that succeeded before a later one refused."""
        undo = Step()
        for kidx, bucket, delta in step.spec.get("incr", ()):
            undo.add("incr", [undo.key(step.keys[kidx - 1]), bucket, str(-int(delta))])
        for hz, ha, hold_id, _, _ in step.spec.get("hold", ()):
            undo.add("unhold", [undo.key(step.keys[hz - 1]), undo.key(step.keys[ha - 1]), hold_id])
        for z, lease_id, _ in step.spec.get("lease", ()):
            undo.add("unlease", [undo.key(step.keys[z - 1]), lease_id])
        for burned in split(reply.extra):
            gidx, grant_id, units = burned.split(",")
            undo.add("incr", [undo.key(step.keys[int(gidx) - 1]), grant_id, units])
        if undo.keys:
            self._run(undo, now)

    def _op(self) -> _Op:
        return _Op(Steps(self._slot_of))

    def _add_checks(
        self,
        op: _Op,
        checks: Sequence[Check],
        *,
        enforce: bool,
        guards: Sequence[Reading] | None = None,
        first_guard: int = 0,
    ) -> None:
        """Put a read of every check in the step of its keys.

        ``guards`` (for the capacity reads from ``first_guard`` on) are the
        readings the decision was made on: the script refuses with "conflict"
        if it finds anything else.
        """
        for i, check in enumerate(checks):
            key = check.limit.key
            series = str(check.limit.subject)
            if key.metric is Metric.CONCURRENT_REQUESTS:
                z = self.layout.leases(series)
                step = op.steps.at(z)
                spec = {
                    "t": "l",
                    "z": step.key(z),
                    "n": check.amount,
                    "lim": check.limit.value,
                    "e": int(enforce and _enforced(check)),
                }
                op.checks.append((step, step.add("checks", spec), [], True))
                continue
            if key.window is None:
                op.checks.append(None)  # a per-request cap reads nothing
                continue
            counter = self.layout.counter(series, key.metric.value, key.window.key)
            hz, ha = self.layout.holds(series, key.metric.value)
            step = op.steps.at(counter)
            fields = _fields(check)
            spec = {
                "t": "w",
                "c": step.key(counter),
                "f": [str(f) for f in fields],
                "hz": step.key(hz),
                "ha": step.key(ha),
                "n": check.amount if check.bucket is not None else 0,
                "lim": check.limit.value,
                "e": int(enforce and _enforced(check)),
            }
            if guards is not None and i >= first_guard:
                seen = guards[i - first_guard]
                spec.update(t="g", used=sum(seen.buckets.values()), held=seen.reserved)
            op.checks.append((step, step.add("checks", spec), fields, False))

    def _add_wallets(
        self,
        op: _Op,
        grants: dict[SubjectRef, list[Grant]],
        *,
        amount: int,
        enforce: bool,
        burn: int,
    ) -> None:
        for subject, mine in grants.items():
            gkey = self.layout.grants(str(subject))
            hz, ha = self.layout.holds(str(subject), Metric.CREDITS.value)
            step = op.steps.at(gkey)
            spec = {
                "g": step.key(gkey),
                "hz": step.key(hz),
                "ha": step.key(ha),
                "ids": [g.id for g in mine],
                "exp": [to_micros(g.expires_at) if g.expires_at else -1 for g in mine],
                "from": [to_micros(g.granted_at) for g in mine],
                "n": amount,
                "e": int(enforce),
                "burn": burn,
            }
            op.wallets.append((step, step.add("wallets", spec), subject, mine))

    def _answers(self, op: _Op, replies: list[Reply]) -> tuple[list[Reading], list[Prepaid]]:
        """Each check's reading and each wallet's balance, in the order they were added."""
        by_step = dict(zip(map(id, op.steps.ordered()), replies, strict=True))
        readings = []
        for entry in op.checks:
            if entry is None:
                readings.append(Reading())
                continue
            step, pos, fields, lease = entry
            text = split(by_step[id(step)].readings)[pos]
            readings.append(parse_reading(text, fields, lease))
        prepaid = []
        for step, pos, subject, mine in op.wallets:
            remaining, held = parse_wallet(split(by_step[id(step)].wallets)[pos])
            grants = tuple(
                Grant(g.id, g.subject, g.amount, g.granted_at, g.expires_at, r)
                for g, r in zip(mine, remaining, strict=True)
            )
            prepaid.append(Prepaid(subject, grants, held))
        return readings, prepaid

    def _add_increments(self, op: _Op, plan: DebitPlan, tracked: set[LimitKey]) -> None:
        keys = tracked | {c.limit.key for c in plan.checks}
        for (series, metric, window, bucket), delta in increments(
            plan.series, plan.amounts, plan.timestamp, self.tz, keys
        ).items():
            counter = self.layout.counter(series, metric, window)
            step = op.steps.at(counter)
            step.add("incr", [step.key(counter), str(bucket), str(delta)])
            if window == "total":  # the lifetime counter: checked against 2^63 - 1 first
                step.add("cap", [step.key(counter), str(bucket), str(delta), f"{metric}|{series}"])

    def _add_event(self, step: Step, shard: int, body: dict[str, Any]) -> None:
        step.spec["seq"] = step.key(self.layout.seq(shard))
        step.spec["event"] = {
            "stream": step.key(self.layout.stream(shard)),
            "shard": shard,
            "shards": self.layout.shards,
            "body": json.dumps(body, separators=(",", ":")),
        }

    def _ledger_step(self, op: _Op, shard: int, key: str, *, config: bool = False) -> Step:
        """The step that makes an operation count; ``config`` adds the cache check."""
        step = op.steps.ledger(key)
        step.spec["seq"] = step.key(self.layout.seq(shard))
        if config:
            step.spec["cfg"] = {
                "k": step.key(self.layout.config(shard)),
                "v": self._operation_version(),
            }
        return step

    # what SQL says about a request ---------------------------------------------
    def _context(
        self, plan: DebitPlan, create_subject: bool
    ) -> tuple[set[LimitKey], dict[SubjectRef, list[Grant]]]:
        """The tracked counters and the charged subjects' grants; creates the subject.

        All of it comes from the configuration cache: the script's version
        check (see ``_cached``) makes sure none of it was stale.
        """
        if not self._cached(("known", str(plan.subject)), lambda: self._known(plan.subject)):
            if not create_subject:
                raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
            with self._tx(hot=True) as conn:  # an insert of a bare subject decides nothing
                self._ensure_subject(conn, plan.subject, plan.now)
        tracked = self._cached(("tracked",), self._load_tracked)
        grants = self._cached(("grants", *map(str, plan.charged)), lambda: self._load_grants(plan))
        return set(tracked), {s: list(g) for s, g in grants.items()}

    def _known(self, ref: SubjectRef) -> bool | None:
        """True, or None (not cached: the subject may be created any moment)."""
        with self._tx() as conn:
            return True if self._get_subject(conn, ref) is not None else None

    def _load_tracked(self) -> frozenset[LimitKey]:
        with self._tx() as conn:
            return frozenset(self._tracked(conn))

    def _load_grants(self, plan: DebitPlan) -> dict[SubjectRef, tuple[Grant, ...]]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.grants).where(t.grants.c.subject.in_([str(s) for s in plan.charged]))
            ).all()
        grants: dict[SubjectRef, list[Grant]] = {}
        for row in rows:
            grant = _grant(row)
            grants.setdefault(grant.subject, []).append(grant)
        return {s: tuple(sorted(g, key=_burn_key)) for s, g in grants.items()}

    # the configuration cache ------------------------------------------------------
    def _snapshot(self) -> tuple[str, dict[Any, Any]]:
        """The cache and the version it belongs to, asking Redis at most once a second."""
        with self._config_lock:
            now = time.monotonic()
            if now - self._config_checked > CONFIG_TTL:
                raw = self._call(lambda: self.redis.get(self.layout.config(0)))
                current = raw.decode() if raw else "0"
                if current != self._config_version:
                    self._config_version, self._config_entries = current, {}
                self._config_checked = now
            return self._config_version, self._config_entries

    def _cached(self, key: tuple[str, ...], load: Any) -> Any:
        """A configuration read, served from the cache of the current version.

        The version is remembered for this thread's operation, and the ledger
        step refuses with "stale" when Redis holds another: then the engine
        plans again from fresh reads. So a cached limit can make a request
        wait a round trip, never admit what the store would refuse.
        """
        version, entries = self._snapshot()
        seen = getattr(self._local, "version", None)
        self._local.version = version if seen in (None, version) else MIXED
        if key in entries:
            return entries[key]
        value = load()
        if value is not None:
            entries[key] = value
        return value

    def _invalidate(self) -> None:
        with self._config_lock:
            self._config_checked = -math.inf

    def _bump_config(self) -> None:
        """After a configuration write: every replica's cache is stale from now on."""
        token = uuid.uuid4().hex
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.layout.shards):
            pipe.set(self.layout.config(shard), token)
        self._call(pipe.execute)
        self._invalidate()

    def _operation_version(self) -> str:
        """The configuration version this thread's plan was built on (MIXED if several).

        It is kept through every round of a conflict loop, so a round that
        reads the cache again cannot quietly move the plan to a newer version.
        """
        version = getattr(self._local, "version", None)
        if version is None:
            version = self._local.version = self._snapshot()[0]
        return str(version)

    @contextmanager
    def _tx(self, *, write: bool = False, hot: bool = False) -> Iterator[Connection]:
        """A ``write`` transaction is a configuration change (the hot paths here use
        ``hot``): once it commits, every replica's configuration cache is stale."""
        with super()._tx(write=write, hot=hot) as conn:
            yield conn
        if write and hasattr(self, "_config_lock"):
            self._bump_config()

    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        key = ("rules", str(ref), str(with_ancestors))
        loaded = self._cached(
            key, lambda: super(RedisStore, self).rule_sets(ref, with_ancestors=with_ancestors)
        )
        return list(loaded)

    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        loaded: dict[str, Any] | None = self._cached(
            ("quota", str(resource)), lambda: super(RedisStore, self).get_resource_quota(resource)
        )
        return copy.deepcopy(loaded)

    def _guards(self, plan: DebitPlan) -> list[Reading] | None:
        """The capacity reads as they are now: the decision is made on these."""
        if plan.capacity is None:
            return None
        return self.read(plan.capacity.reads, plan.now)

    # counting ------------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        op = self._op()
        self._add_checks(op, checks, enforce=False)
        if not op.steps.ordered():
            return [Reading() for _ in checks]
        return self._answers(op, self._execute(op, now, dry=True))[0]

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.grants).where(t.grants.c.subject.in_([str(s) for s in subjects]))
            ).all()
        grants: dict[SubjectRef, list[Grant]] = {}
        for row in rows:
            grants.setdefault(SubjectRef.parse(row.subject), []).append(_grant(row))
        ordered = {s: sorted(grants[s], key=_burn_key) for s in subjects if s in grants}
        if not ordered:
            return []
        op = self._op()
        self._add_wallets(op, ordered, amount=0, enforce=False, burn=0)
        return self._answers(op, self._execute(op, now, dry=True))[1]

    def grants(self, subject: SubjectRef) -> list[Grant]:
        stored = super().grants(subject)
        if not stored:
            return stored
        key = self.layout.grants(str(subject))
        values = self._call(lambda: self.redis.hmget(key, [g.id for g in stored]))
        return [
            Grant(g.id, g.subject, g.amount, g.granted_at, g.expires_at, int(v or 0))
            for g, v in zip(stored, values, strict=True)
        ]

    @_one_operation
    def _decide_and_apply(
        self,
        plan: DebitPlan,
        create_subject: bool,
        ledger: tuple[int, str],
        effects: Any,
        *,
        idem: dict[str, str] | None = None,
    ) -> tuple[Decision, Reply | None]:
        """The shared path of debit, reserve and acquire.

        ``effects(op, step)`` adds what an admitted request writes; ``step``
        is the ledger step. Returns the decision and the ledger step's reply
        (None when refused).
        """
        tracked, grants = self._context(plan, create_subject)
        enforce = plan.mode is Mode.ENFORCE
        # A per-request cap (input_sequence_length) refuses whatever the counters say.
        capped = enforce and any(
            c.is_cap
            and c.limit.key.metric is not Metric.CONCURRENT_REQUESTS
            and not c.limit.shadow
            and blocks(c, Reading())
            for c in plan.checks
        )
        credits = plan.amounts[Metric.CREDITS]
        for attempt in range(MAX_ROUNDS):
            if attempt:
                _back_off(attempt)
            guards = self._guards(plan)
            refuse = capped or (guards is not None and capacity_refuses(plan, guards))
            op = self._op()
            shard, lkey = ledger
            step = self._ledger_step(op, shard, lkey, config=True)
            self._add_checks(
                op, plan.reads, enforce=enforce, guards=guards, first_guard=len(plan.checks)
            )
            self._add_wallets(
                op,
                {s: g for s, g in grants.items() if s in plan.charged},
                amount=credits,
                enforce=enforce,
                burn=0 if plan.hold else credits,
            )
            if not plan.hold:
                self._add_increments(op, plan, tracked)
            effects(op, step)
            if idem is not None:
                step.spec["idem"] = {
                    "k": step.key(idem["key"]),
                    "fp": idem["fp"],
                    "p": plan_json(plan, *self._places(op)),
                }
            replies = self._execute(op, plan.now, dry=refuse)
            last = replies[-1]
            statuses = {r.status for r in replies}
            if "lost" in statuses:
                raise StoreUnreachable(
                    "Redis has lost tokenquota's data; run `tokenquota rebuild` to restore it "
                    "from the ledger"
                )
            if "stale" in statuses:
                self._invalidate()
                raise StaleConfig
            if "replay" in statuses:
                return self._replayed(plan, next(r for r in replies if r.status == "replay")), None
            _refuse_too_large(replies)
            if "conflict" in statuses:
                continue
            readings, prepaid = self._answers(op, replies)
            admitted = statuses == {"ok"} and not refuse
            decision = decide(plan, readings, last.event_id if admitted else None, prepaid=prepaid)
            if decision.allowed != admitted:  # the script and decide() share one rule
                raise AssertionError(f"Redis said {statuses}, decide() said {decision.allowed}")
            if decision.shadow_blocked:
                with self._tx(hot=True) as conn:  # a statistic: decides nothing
                    self._count_shadow(conn, decision)
            return decision, last if admitted else None
        raise StoreUnavailable("the resource is too busy to measure its capacity; retry")

    def _places(self, op: _Op) -> tuple[list[CheckPlace], list[WalletPlace]]:
        """Where each check's and wallet's answer comes back, by step index."""
        index = {id(step): i for i, step in enumerate(op.steps.ordered())}
        checks: list[CheckPlace] = [
            None if e is None else (index[id(e[0])], e[1], e[2], e[3]) for e in op.checks
        ]
        wallets: list[WalletPlace] = [
            (index[id(step)], pos, subject, mine) for step, pos, subject, mine in op.wallets
        ]
        return checks, wallets

    def _replayed(self, plan: DebitPlan, reply: Reply) -> Decision:
        """A retry of an idempotent request gets the first answer."""
        if reply.extra not in (plan.fingerprint, ""):  # "" after a rebuild: not known
            raise IdempotencyConflict(
                "this idempotency key was used for a different request",
                details={"field": "idempotency_key"},
            )
        if reply.decision:  # stored by a version that wrote the answer after the script
            return Decision.from_wire(json.loads(reply.decision)).as_replay()
        if reply.plan:
            steps = [tuple(s) for s in json.loads(reply.pre or "[]")]
            steps.append((reply.readings, reply.wallets))
            return first_answer(reply.plan, steps, reply.event_id).as_replay()
        return self._from_ledger(reply.event_id)

    def _from_ledger(self, event_id: int) -> Decision:
        """The admission an event in the ledger records, when nothing else is left of
        its answer (Redis rebuilt from the ledger): admitted, the same event, subject,
        mode, amounts and timestamp, and no limits, since the ledger keeps none of the
        figures the first answer showed. Deciding again against today's counters
        could refuse a request that was charged."""
        self.flush()
        with self._tx() as conn:
            row = conn.execute(sa.select(t.events).where(t.events.c.id == event_id)).first()
        if row is None:
            raise StoreUnavailable(
                f"the ledger has no event {event_id} for this idempotency key; retry shortly"
            )
        event = _event(row)
        return Decision(
            allowed=True,
            subject=str(event.subject),
            mode=event.mode,
            amounts=event.amounts.to_numbers(),
            timestamp=event.timestamp,
            limits=(),
            event_id=event_id,
            replayed=True,
        )

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        subject = str(plan.subject)
        idem = None
        if plan.idempotency_key:
            shard, key = self.layout.idem(subject, plan.idempotency_key)
            idem = {"key": key, "fp": plan.fingerprint}
        else:
            shard = random.randrange(self.layout.shards)
            key = self.layout.stream(shard)

        def effects(op: _Op, step: Step) -> None:
            self._add_event(step, shard, _event_body(plan))

        return self._decide_and_apply(plan, create_subject, (shard, key), effects, idem=idem)[0]

    # reservations and leases ----------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        shard, key = self.layout.record("r", reservation.id)
        expires = str(to_micros(reservation.expires_at))

        def effects(op: _Op, step: Step) -> None:
            for series in reservation.series:
                for metric, units in reservation.amounts.items():
                    hz, ha = self.layout.holds(series, metric.value)
                    at = op.steps.at(hz)
                    at.add("hold", [at.key(hz), at.key(ha), reservation.id, expires, str(units)])
            step.spec["record"] = {"k": step.key(key), "fields": _reservation_fields(reservation)}

        return self._decide_and_apply(plan, create_subject, (shard, key), effects)[0]

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        _, key = self.layout.record("r", reservation_id)
        raw = self._call(lambda: self.redis.hgetall(key))
        if not raw:
            return None
        row = {k.decode(): v.decode() for k, v in raw.items()}
        return Reservation(
            id=reservation_id,
            subject=SubjectRef.parse(row["subject"]),
            charged=tuple(SubjectRef.parse(s) for s in json.loads(row["charged"])),
            amounts=Amounts.from_units_json(json.loads(row["amounts"])),
            created_at=from_micros(int(row["created_at"])),
            expires_at=from_micros(int(row["expires_at"])),
            state=HoldState(row["state"]),
            committed=_committed_answer(row),
            resource=SubjectRef.parse(row["resource"]) if row.get("resource") else None,
        )

    @_one_operation
    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        shard, key = self.layout.record("r", reservation_id)
        for _ in range(MAX_ROUNDS):
            reservation = self.get_reservation(reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.state is HoldState.COMMITTED:
                return self._committed(reservation_id, plan)
            tracked, grants = self._context(plan, True)
            op = self._op()
            # The record step goes first on a cluster: only one commit may pass it.
            step = self._ledger_step(op, shard, key, config=True)
            step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
            step.spec["record"] = {
                "k": step.key(key),
                "fields": ["state", HoldState.COMMITTED.value],
            }
            self._add_event(step, shard, _event_body(plan, reservation_id))
            for series in reservation.series:
                for metric in reservation.amounts:
                    hz, ha = self.layout.holds(series, metric.value)
                    at = op.steps.at(hz)
                    at.add("unhold", [at.key(hz), at.key(ha), reservation_id])
            self._add_checks(op, plan.reads, enforce=False)
            credits = plan.amounts[Metric.CREDITS]
            self._add_wallets(
                op,
                {s: g for s, g in grants.items() if s in plan.charged},
                amount=credits,
                enforce=False,
                burn=credits,
            )
            self._add_increments(op, plan, tracked)
            if len(op.steps.ordered()) == 1:  # one atomic step: its answer's inputs go in it
                step.spec["record"]["p"] = plan_json(plan, *self._places(op))
            replies = self._execute_ledger_first(op, plan.now)
            if replies[-1].status == "lost":
                raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
            if replies[-1].status == "stale":
                self._invalidate()
                raise StaleConfig
            if replies[-1].status == "state":
                continue  # released, expired or committed meanwhile: look again
            _refuse_too_large(replies)
            readings, prepaid = self._answers(op, replies)
            decision = decide(plan, readings, replies[-1].event_id, prepaid=prepaid)
            wire = json.dumps(decision.to_wire())
            self._call(lambda w=wire: self.redis.hset(key, "d", w))
            return decision
        raise StoreUnavailable("the reservation kept changing; retry")

    def _committed(self, reservation_id: str, plan: DebitPlan) -> Decision:
        _, key = self.layout.record("r", reservation_id)
        raw = self._call(lambda: self.redis.hgetall(key))
        row = {k.decode(): v.decode() for k, v in raw.items()}
        answer = _committed_answer(row)
        if answer is not None:
            return answer.as_replay()
        return self._from_ledger(int(row.get("eid") or 0))

    def _execute_ledger_first(self, op: _Op, now: datetime) -> list[Reply]:
        """For commit: the record step decides (one commit wins); the rest cannot refuse."""
        steps = op.steps.ordered()
        steps = [steps[-1], *steps[:-1]]
        first = self._run(steps[0], now)
        replies = [first]
        if first.status == "ok":
            replies += [self._run(s, now) for s in steps[1:]]
        else:
            replies += [self._run(s, now, dry=True) for s in steps[1:]]
        # _answers expects the usual order: ledger step last
        return [*replies[1:], replies[0]] if len(replies) > 1 else replies

    def release(self, reservation_id: str, now: datetime) -> bool:
        reservation = self.get_reservation(reservation_id)
        if reservation is None:
            raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
        if reservation.state is not HoldState.HELD:
            return False
        shard, key = self.layout.record("r", reservation_id)
        op = self._op()
        step = self._ledger_step(op, shard, key)
        step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
        step.spec["record"] = {"k": step.key(key), "fields": ["state", HoldState.RELEASED.value]}
        for series in reservation.series:
            for metric in reservation.amounts:
                hz, ha = self.layout.holds(series, metric.value)
                at = op.steps.at(hz)
                at.add("unhold", [at.key(hz), at.key(ha), reservation_id])
        replies = self._execute_ledger_first(op, now)
        return replies[-1].status == "ok"

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        shard, key = self.layout.record("l", lease.id)
        expires = str(to_micros(lease.expires_at))

        def effects(op: _Op, step: Step) -> None:
            for series in lease.series:
                z = self.layout.leases(series)
                at = op.steps.at(z)
                at.add("lease", [at.key(z), lease.id, expires])
            step.spec["record"] = {"k": step.key(key), "fields": _lease_fields(lease)}

        return self._decide_and_apply(plan, create_subject, (shard, key), effects)[0]

    def get_lease(self, lease_id: str) -> Lease | None:
        _, key = self.layout.record("l", lease_id)
        raw = self._call(lambda: self.redis.hgetall(key))
        if not raw:
            return None
        row = {k.decode(): v.decode() for k, v in raw.items()}
        return Lease(
            id=lease_id,
            subject=SubjectRef.parse(row["subject"]),
            charged=tuple(SubjectRef.parse(s) for s in json.loads(row["charged"])),
            created_at=from_micros(int(row["created_at"])),
            expires_at=from_micros(int(row["expires_at"])),
            released_at=from_micros(int(row["released_at"])) if row.get("released_at") else None,
            resource=SubjectRef.parse(row["resource"]) if row.get("resource") else None,
        )

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        lease = self.get_lease(lease_id)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
        if lease.released_at is not None:
            return False
        return self._lease_step(lease, now, released=True)

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        lease = self.get_lease(lease_id)
        check_extendable(lease, lease_id, now)
        assert lease is not None
        self._lease_step(lease, now, expires_at=expires_at)
        extended = self.get_lease(lease_id)
        assert extended is not None
        return extended

    def _lease_step(
        self,
        lease: Lease,
        now: datetime,
        *,
        released: bool = False,
        expires_at: datetime | None = None,
    ) -> bool:
        shard, key = self.layout.record("l", lease.id)
        op = self._op()
        step = self._ledger_step(op, shard, key)
        step.spec["state"] = {"k": step.key(key), "want": "live"}
        for series in lease.series:
            z = self.layout.leases(series)
            at = op.steps.at(z)
            if released:
                at.add("unlease", [at.key(z), lease.id])
            else:
                assert expires_at is not None
                at.add("extend", [at.key(z), lease.id, str(to_micros(expires_at))])
        fields = (
            ["state", "released", "released_at", str(to_micros(now))]
            if released
            else ["expires_at", str(to_micros(expires_at))]
            if expires_at
            else []
        )
        step.spec["record"] = {"k": step.key(key), "fields": fields}
        replies = self._execute_ledger_first(op, now)
        return replies[-1].status == "ok"

    # prepaid credits ------------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        """The balance and the grant's event first (in Redis, at once), then the SQL row."""
        shard = random.randrange(self.layout.shards)
        op = self._op()
        step = self._ledger_step(op, shard, self.layout.stream(shard))
        gkey = self.layout.grants(str(grant.subject))
        at = op.steps.at(gkey)
        at.add("cap", [at.key(gkey), GRANTED, str(grant.amount), "credits"])
        at.add("incr", [at.key(gkey), grant.id, str(grant.amount)])
        at.add("incr", [at.key(gkey), GRANTED, str(grant.amount)])
        body = {
            "kind": "grant",
            "subject": str(grant.subject),
            "charged": [str(grant.subject)],
            "ts": to_micros(grant.granted_at),
            "recorded_at": to_micros(grant.granted_at),
            "mode": Mode.RECORD.value,
            "amounts": {Metric.CREDITS.value: grant.amount},
            "model": None,
            "tags": {"grant": grant.id},
            "idempotency_key": None,
            "resource": None,
        }
        self._add_event(step, shard, body)
        replies = self._execute(op, grant.granted_at)
        if replies[-1].status == "lost":
            raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
        if any(r.status == "too_large" for r in replies):
            raise grant_too_large(str(grant.subject))
        with self._tx(write=True) as conn:
            self._ensure_subject(conn, grant.subject, grant.granted_at)
            conn.execute(
                t.grants.insert().values(
                    id=grant.id,
                    subject=str(grant.subject),
                    amount=grant.amount,
                    granted_at=to_micros(grant.granted_at),
                    expires_at=to_micros(grant.expires_at) if grant.expires_at else None,
                    remaining=grant.remaining,
                )
            )
            self._audit(
                conn,
                grant.granted_at,
                actor,
                "grant.add",
                str(grant.subject),
                None,
                grant.to_wire(grant.granted_at),
            )
        return replies[-1].event_id

    # the ledger: Redis streams moved into SQL --------------------------------------
    def _move_forever(self) -> None:
        while not self._stop.wait(MOVE_INTERVAL):
            try:
                self.flush()
            except Exception:  # keep moving once the database is back
                log.exception("moving events to the ledger failed; retrying")

    def flush(self) -> int:
        """Move every event in the Redis streams into the SQL ledger; returns how many.

        Safe to run in many replicas at once: an event's id is its primary key,
        so a second copy is skipped, and it leaves the stream only after its
        transaction committed.
        """
        moved = 0
        for shard in range(self.layout.shards):
            stream = self.layout.stream(shard)
            while True:
                entries = self._call(lambda s=stream: self.redis.xrange(s, count=MOVE_BATCH))
                if not entries:
                    break
                with self._tx(hot=True) as conn:  # unique ids: nothing to serialise
                    refused = self._insert_events(conn, entries)
                self._set_aside(shard, stream, entries, refused)
                moved += len(entries) - len(refused)
                if len(entries) < MOVE_BATCH:
                    break
        return moved

    def _drain(self, conn: Connection) -> None:
        """Move everything now, inside ``conn`` (which may hold the write lock)."""
        for shard in range(self.layout.shards):
            stream = self.layout.stream(shard)
            while True:
                entries = self._call(lambda s=stream: self.redis.xrange(s, count=MOVE_BATCH))
                if not entries:
                    break
                refused = self._insert_events(conn, entries)
                self._set_aside(shard, stream, entries, refused)

    def _insert_events(self, conn: Connection, entries: Sequence[Any]) -> dict[Any, str]:
        """Insert a batch; returns the entries the ledger refused, by stream id, with why.

        One bad entry (a NUL a pre-validation version let in, a body that is not
        an event) must not hold back the rest, or the mover, ``rebuild`` and
        every ledger read fail on it forever. The batch is tried whole; when the
        database refuses it for its data, each entry is retried on its own and
        only the refused ones are set aside. A database that is down is not a
        data error: that still fails the whole pass, to be retried later.
        """
        refused: dict[Any, str] = {}
        parsed: list[tuple[Any, dict[str, Any], list[dict[str, Any]]]] = []
        for entry_id, data in entries:
            try:
                body = json.loads(data[b"e"])
                event_id = int(data[b"id"])
                row = {"id": event_id, **body}
                links = [
                    {"subject": s, "ts": body["ts"], "event_id": event_id} for s in body["charged"]
                ]
            except (KeyError, TypeError, ValueError) as exc:
                refused[entry_id] = f"not an event: {type(exc).__name__}: {exc}"
                continue
            parsed.append((entry_id, row, links))
        try:
            with conn.begin_nested():
                self._insert_rows(
                    conn, [r for _, r, _ in parsed], [k for *_, ks in parsed for k in ks]
                )
            return refused
        except _DATA_ERRORS:
            pass
        for entry_id, row, links in parsed:
            try:
                with conn.begin_nested():
                    self._insert_rows(conn, [row], links)
            except _DATA_ERRORS as exc:
                refused[entry_id] = f"refused by the ledger: {_reason(exc)}"
        return refused

    def _insert_rows(
        self, conn: Connection, rows: list[dict[str, Any]], links: list[dict[str, Any]]
    ) -> None:
        if rows:
            insert = self._insert(t.events).on_conflict_do_nothing(index_elements=["id"])
            conn.execute(insert, rows)
        if links:
            conn.execute(self._insert(t.event_subjects).on_conflict_do_nothing(), links)

    def _set_aside(
        self, shard: int, stream: str, entries: Sequence[Any], refused: dict[Any, str]
    ) -> None:
        """Quarantine the refused entries, then drop the batch from the stream.

        Quarantine comes first: a crash in between leaves an entry in both
        places (seen twice by an operator), never in neither. docs/redis.md
        says how to read the quarantine.
        """
        if refused:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id, data in entries:
                if entry_id in refused:
                    fields = {**data, b"stream_id": entry_id, b"reason": refused[entry_id]}
                    pipe.xadd(self.layout.quarantine(shard), fields)
            self._call(pipe.execute)
            for entry_id, reason in refused.items():
                log.error(
                    "ledger refused Redis event %s; quarantined in %s: %s",
                    display(_text(entry_id)),
                    self.layout.quarantine(shard),
                    display(reason),
                )
        self._call(lambda: self.redis.xdel(stream, *[i for i, _ in entries]))

    def quarantined(self) -> list[dict[str, str]]:
        """Every quarantined event, oldest first per shard, for an operator to inspect."""
        out: list[dict[str, str]] = []
        for shard in range(self.layout.shards):
            key = self.layout.quarantine(shard)
            for qid, data in self._call(lambda k=key: self.redis.xrange(k)):
                out.append(
                    {
                        "quarantine_id": _text(qid),
                        **{_text(k): _text(v) for k, v in data.items()},
                    }
                )
        return out

    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        self.flush()  # read your own writes
        return super().events(subject=subject, start=start, end=end, offset=offset, limit=limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        self.flush()
        return super().iter_events(subject=subject, start=start, end=end)

    # counters written by SQL paths (backfill of a new limit, rebuild) go to Redis
    def _replay(
        self, conn: Connection, keys: set[LimitKey], start: datetime | None = None
    ) -> dict[CounterKey, int]:
        self._drain(conn)
        return super()._replay(conn, keys, start)

    def _add_counters(self, conn: Connection, deltas: dict[CounterKey, int]) -> None:
        if not deltas:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (series, metric, window, bucket), value in deltas.items():
            pipe.hincrby(self.layout.counter(series, metric, window), str(bucket), value)
        self._call(pipe.execute)

    def rebuild(self) -> int:
        with self._tx(write=True) as conn:
            return self._rebuild(conn)

    def _rebuild(self, conn: Connection) -> int:
        """Restore Redis from the ledger: counters, balances, idempotency, sequences.

        Live holds and leases are kept (a lost Redis has none left). Run it
        with the service stopped or idle: a consume during it may be counted
        twice or not at all until the next rebuild.
        """
        self._drain(conn)
        self._delete("c")
        self._delete("g")
        count = super()._rebuild(conn)  # counters land in Redis through _add_counters
        pipe = self.redis.pipeline(transaction=False)
        for row in conn.execute(sa.select(t.grants.c.id, t.grants.c.subject, t.grants.c.remaining)):
            pipe.hset(self.layout.grants(row.subject), row.id, row.remaining)
        total = sa.func.sum(t.grants.c.amount)
        for subject, granted in conn.execute(
            sa.select(t.grants.c.subject, total).group_by(t.grants.c.subject)
        ):
            pipe.hset(self.layout.grants(subject), GRANTED, int(granted))
        ev = t.events.c
        for row in conn.execute(
            sa.select(ev.id, ev.subject, ev.idempotency_key).where(ev.idempotency_key.is_not(None))
        ):
            _, key = self.layout.idem(row.subject, row.idempotency_key)
            pipe.hsetnx(key, "fp", "")  # the fingerprint is not in the ledger: any retry replays
            pipe.hsetnx(key, "eid", row.id)
        top = conn.execute(sa.select(sa.func.max(ev.id))).scalar() or 0
        for shard in range(self.layout.shards):
            pipe.set(self.layout.seq(shard), top // self.layout.shards + 1, nx=True)
        self._call(pipe.execute)
        for shard in range(self.layout.shards):  # never reuse an id: only ever raise a sequence
            seq = self.layout.seq(shard)
            floor = top // self.layout.shards + 1
            current = int(self._call(lambda s=seq: self.redis.get(s)) or 0)
            if current < floor:
                self._call(lambda s=seq, f=floor: self.redis.set(s, f))
        self._set_epoch(conn)
        return count

    def _delete(self, what: str) -> None:
        pattern = self.layout.pattern(what)
        batch: list[bytes] = []
        for name in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                self._unlink(batch)
                batch = []
        if batch:
            self._unlink(batch)

    def _unlink(self, names: list[bytes]) -> None:
        if self.cluster:  # one key per call: they may live in different slots
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.unlink(name)
            self._call(pipe.execute)
        else:
            self._call(lambda: self.redis.unlink(*names))


# A row the database refuses for what it holds (NUL in text, a string no encoder
# takes, a missing column). A database that cannot be reached (OperationalError,
# also a StatementError) is not among them: that pass fails and is retried.
_DATA_ERRORS = (sa.exc.DataError, sa.exc.IntegrityError, UnicodeError)


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}".splitlines()[0]


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _refuse_too_large(replies: Sequence[Reply]) -> None:
    """A step found a lifetime counter without room for the amount: a 422, nothing kept."""
    for reply in replies:
        if reply.status == "too_large":
            metric, series = reply.extra.split("|", 1)
            raise too_large(Metric(metric), series)


def _deployment_id(conn: Connection) -> str:
    """This deployment's id from the SQL catalog, made on first use (under a write lock)."""
    found = conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == "deployment_id")).scalar()
    if found is None:
        found = uuid.uuid4().hex
        conn.execute(t.meta.insert().values(key="deployment_id", value=found))
    return str(found)


def _back_off(attempt: int) -> None:
    """A random pause, growing with each lost round and capped at BACK_OFF_CAP.

    Without it, requests racing for one busy resource re-read and retry in
    lockstep, each invalidating the others' reads, and some run out of rounds.
    Measured with 18 threads on one resource of a 3-node cluster
    (tests/test_concurrency.py): the most rounds one request needed fell from
    32-40 to 9-16, and the 50-round limit was once hit without it.
    """
    time.sleep(random.uniform(0, min(BACK_OFF_CAP, 0.001 * 2**attempt)))


def _enforced(check: Check) -> bool:
    """Whether the script must refuse on this check (the rule of decisions.blocks)."""
    limit = check.limit
    if limit.shadow or limit.unlimited:
        return False
    if limit.key.metric is Metric.CONCURRENT_REQUESTS:
        return True
    return check.bucket is not None


def _fields(check: Check) -> list[int]:
    """The buckets a check sums: one for a calendar window, each step of a rolling one."""
    window = check.limit.key.window
    if window is None:
        return []
    if window.rolling_seconds:
        return list(range(check.lo, check.hi + 1, window.bucket_seconds))
    return [check.lo]


def _burn_key(g: Grant) -> tuple[bool, datetime, datetime, str]:
    """Spending order: earliest expiry first (see domain.grants.burn_order)."""
    return (g.expires_at is None, g.expires_at or g.granted_at, g.granted_at, g.id)


def _event_body(plan: DebitPlan, reservation_id: str | None = None) -> dict[str, Any]:
    kind, tags = usage_kind(plan.tags, reservation_id)
    return {
        "kind": kind,
        "subject": str(plan.subject),
        "charged": [str(s) for s in plan.charged],
        "ts": to_micros(plan.timestamp),
        "recorded_at": to_micros(plan.now),
        "mode": plan.mode.value,
        "amounts": plan.amounts.to_units_json(),
        "model": plan.model,
        "tags": tags,
        "idempotency_key": plan.idempotency_key,
        "resource": str(plan.resource) if plan.resource else None,
    }


def _committed_answer(row: dict[str, str]) -> Decision | None:
    """A committed reservation's answer: as stored after the script, or recomputed from
    the inputs a one-step commit kept; None when neither survived."""
    if row.get("d"):
        return Decision.from_wire(json.loads(row["d"]))
    if row.get("p") and row.get("state") == HoldState.COMMITTED.value:
        return first_answer(row["p"], [(row.get("rd", ""), row.get("wl", ""))], int(row["eid"]))
    return None


def _reservation_fields(r: Reservation) -> list[str]:
    return [
        "state",
        HoldState.HELD.value,
        "subject",
        str(r.subject),
        "charged",
        json.dumps([str(s) for s in r.charged]),
        "amounts",
        json.dumps(r.amounts.to_units_json()),
        "created_at",
        str(to_micros(r.created_at)),
        "expires_at",
        str(to_micros(r.expires_at)),
        "resource",
        str(r.resource) if r.resource else "",
    ]


def _lease_fields(lease: Lease) -> list[str]:
    return [
        "state",
        "live",
        "subject",
        str(lease.subject),
        "charged",
        json.dumps([str(s) for s in lease.charged]),
        "created_at",
        str(to_micros(lease.created_at)),
        "expires_at",
        str(to_micros(lease.expires_at)),
        "resource",
        str(lease.resource) if lease.resource else "",
    ]
