"""Operations as Redis steps: building them, running them, reading their answers.

One operation (a consume, a reservation, a commit...) is a set of steps, one
per hash slot on a cluster (one in all on a standalone Redis), each run by
``step.lua`` atomically. The ledger step (the one holding the event
sequence) is what makes an operation count; on a cluster, earlier steps are
undone when a later one refuses.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.resources import files
from typing import Any

import orjson
from redis.exceptions import NoScriptError

from tokenquota.domain.alerts import crossings, threshold_candidates
from tokenquota.domain.bounds import too_large
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import Check, DebitPlan, Mode, Prepaid, Reading
from tokenquota.domain.grants import Grant
from tokenquota.domain.limits import EffectiveLimit
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.redis.answers import CheckPlace, WalletPlace
from tokenquota.storage.redis.bodies import UsageBodies, row_of
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import (
    NAMES_KEPT,
    Layout,
    Reply,
    Step,
    Steps,
    counts,
    parse_reading,
    parse_wallet,
    split,
)
from tokenquota.storage.redis.line import Line, head
from tokenquota.storage.redis.shapes import (
    SHAPES_KEPT,
    Counter,
    Counting,
    Frame,
    Op,
    Placed,
    Read,
)
from tokenquota.storage.sql.outbox import alert_row
from tokenquota.storage.sql.tx import Database

STEP_LUA = files("tokenquota.storage.redis").joinpath("step.lua").read_text()
BACK_OFF_CAP = 0.1  # seconds: the longest pause between two rounds
# Encoded key lists kept before they are built again: one per shape of step, but a
# step with an idempotency record names a key of its own, so the bound is small.
LISTS_KEPT = 1_000


class _Checks(Sequence[Check]):
    """A plan's checks, read only when indexed: a frame's copy reads them only for
    amounts it has not filled in yet, and a placed plan (``PlacedPlan``) builds
    its checks on first read, which a warm consume otherwise never does."""

    __slots__ = ("plan",)

    def __init__(self, plan: DebitPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan.checks)

    def __getitem__(self, i: Any) -> Any:
        return self.plan.checks[i]


class Runner:
    """Builds and runs the steps of operations on one Redis keyspace."""

    def __init__(self, db: Database, client: Any, cluster: bool, layout: Layout) -> None:
        self.db = db
        self.redis = client
        self.layout = layout
        self._script = client.register_script(STEP_LUA)
        self._key_bytes: dict[str, bytes] = {}
        self._key_lists: dict[tuple[str, ...], tuple[list[bytes], bytes]] = {}
        # A single Redis: the step's calls go on the line's own connections (line.py).
        self._line = None if cluster else Line(client, STEP_LUA)
        self._counting: dict[tuple[Any, ...], Counting] = {}
        self._frames: dict[tuple[Any, ...], Frame] = {}
        # Per limit (by identity: a limit's hash is computed in Python), what reading it
        # takes (``_read_of``); the entry keeps the limit, so its id stays its own.
        self._reads: dict[int, Read] = {}
        self._bodies = UsageBodies()
        self._slot_of: Callable[[str], int] | None = None
        if cluster:
            from redis.crc import key_slot

            self._slot_of = lambda key: int(key_slot(key.encode()))

    # running steps -------------------------------------------------------------
    def run(self, step: Step, now: datetime, *, dry: bool = False) -> Reply:
        keys, framed = self._encoded(step.keys)
        argv = step.argv(to_micros(now), dry=dry)
        line = self._line
        if line is not None:
            script = self._script
            return Reply.parse(call(lambda: line.evalsha(script, keys, framed, argv)))
        return Reply.parse(call(lambda: self._evalsha(keys, argv)))

    def _evalsha(self, keys: list[bytes], argv: list[str | bytes]) -> Any:
        """What ``Script.__call__`` does for a client that is not a pipeline, less its
        checks of the client's type (a measurable part of redis-py's work per call)."""
        script = self._script
        try:
            return self.redis.evalsha(script.sha, len(keys), *keys, *argv)
        except NoScriptError:  # a server restarted, flushed, or failed over
            script.sha = self.redis.script_load(STEP_LUA)
            return self.redis.evalsha(script.sha, len(keys), *keys, *argv)

    def _encoded(self, keys: list[str]) -> tuple[list[bytes], bytes]:
        """Key names as bytes, encoded once: redis-py checks the type of and encodes
        every argument of every call otherwise. The list of one shape of step (a
        consume's 19 names) is kept whole, with its part of the line's frame; a step
        naming a key of its own (an idempotency record) encodes its names one by one."""
        names = tuple(keys)
        found = self._key_lists.get(names)
        if found is not None:
            return found
        known = self._key_bytes
        if len(known) >= NAMES_KEPT:
            known.clear()
        out = []
        for key in keys:
            raw = known.get(key)
            if raw is None:
                raw = known[key] = key.encode()
            out.append(raw)
        if len(self._key_lists) >= LISTS_KEPT:
            self._key_lists.clear()
        found = self._key_lists[names] = (out, head(out) if self._line is not None else b"")
        return found

    def close(self) -> None:
        """Close the line's own connections (the client's pool is closed by its owner)."""
        if self._line is not None:
            self._line.close()

    def execute(self, op: Op, now: datetime, *, dry: bool = False) -> list[Reply]:
        """Run every step; on a cluster, undo earlier steps when a later one refuses.

        A refused step's successors run dry, so the answer still reports every limit.
        """
        steps = op.steps.ordered()
        replies: list[Reply] = []
        for i, step in enumerate(steps):
            if "idem" in step.spec:  # it keeps what the steps before it read (see answers.py)
                pre = [[r.readings, r.wallets] for r in replies]
                step.spec["idem"]["pre"] = json.dumps(pre) if pre else "[]"
            if op.before_ledger is not None and i and i == len(steps) - 1:
                op.before_ledger(steps[:i], replies)
            reply = self.run(step, now, dry=dry)
            replies.append(reply)
            if reply.status == "ok":
                continue
            replies += [self.run(rest, now, dry=True) for rest in steps[i + 1 :]]
            for done, answer in zip(steps[:i], replies[:i], strict=True):
                if not dry:
                    self.undo(done, answer, now)
            break
        return replies

    def undo(self, step: Step, reply: Reply, now: datetime) -> None:
        """Reverse one cluster step that succeeded before a later one refused."""
        undo = Step()
        incr = step.spec.get("incr", [])
        for i in range(0, len(incr), 3):  # flat: key, bucket, delta
            kidx, bucket, delta = incr[i : i + 3]
            undo.add("incr", [undo.key(step.keys[kidx - 1]), bucket, str(-int(delta))])
        cap = step.spec.get("cap", [])
        for i in range(0, len(cap), 4):  # flat: key, field, delta, name; added like incr
            kidx, bucket, delta, _ = cap[i : i + 4]
            undo.add("incr", [undo.key(step.keys[kidx - 1]), bucket, str(-int(delta))])
        for hz, ha, hold_id, _, _ in step.spec.get("hold", ()):
            undo.add("unhold", [undo.key(step.keys[hz - 1]), undo.key(step.keys[ha - 1]), hold_id])
        for z, lease_id, _ in step.spec.get("lease", ()):
            undo.add("unlease", [undo.key(step.keys[z - 1]), lease_id])
        for burned in split(reply.extra):
            gidx, grant_id, units = burned.split(",")
            undo.add("incr", [undo.key(step.keys[int(gidx) - 1]), grant_id, units])
        if undo.keys:
            self.run(undo, now)

    def op(self) -> Op:
        return Op(Steps(self._slot_of))

    def begin(
        self,
        plan: DebitPlan,
        tracked: Tracking,
        ledger: tuple[int, str],
        wallets: dict[SubjectRef, list[Grant]],
        *,
        guards: Sequence[Reading] | None,
    ) -> tuple[Op, Step]:
        """A debit's operation before its effects: the ledger step, a read of every
        check, the wallets and the increments; returns it and its ledger step.

        On a single Redis a placed plan (``DebitPlan.placement``: every request of a
        span of time reads the same buckets) with no guards, wallets or hold gets a
        copy of a ``Frame``: the same step, built once per placement, metrics spent,
        configuration version and span of the counters' buckets, with the request's
        amounts filled in. Building it was about a third of a warm consume's Python.
        """
        shard, key = ledger
        enforce = plan.mode is Mode.ENFORCE
        placement = plan.placement
        warm = (
            self._line is not None
            and placement is not None
            and guards is None
            and not wallets
            and not plan.hold
        )
        if warm:
            # every input of the step's spec but the time, which the frame's span
            # checks, and the amounts, which a copy fills in: only which metrics are
            # spent (the counters added to) is the shape's
            units = plan.amounts.units()
            fkey = (
                id(placement),
                id(tracked),
                plan.series,
                tuple(units),
                enforce,
                plan.config_version,
                shard,
            )
            frame = self._frames.get(fkey)
            if frame is not None and frame.holds(placement, tracked, plan.timestamp, self.db.tz):
                return frame.copy(units, _Checks(plan))
        op = self.op()
        step = self.ledger_step(op, shard, key, version=plan.config_version)
        self.add_checks(
            op, plan.reads, enforce=enforce, guards=guards, first_guard=len(plan.checks)
        )
        credits = plan.amounts[Metric.CREDITS]
        burn = 0 if plan.hold else credits
        self.add_wallets(op, wallets, amount=credits, enforce=enforce, burn=burn)
        if plan.hold:
            return op, step
        shape, placed = self.add_increments(op, plan, tracked)
        if warm:
            if len(self._frames) >= SHAPES_KEPT:
                self._frames.clear()
            self._frames[fkey] = Frame(
                placement, tracked, (shape, placed), op, step, plan.amounts.units(), plan.checks
            )
        return op, step

    def add_checks(
        self,
        op: Op,
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
        at = op.steps.at
        known = self._reads
        for i, check in enumerate(checks):
            limit = check.limit
            found = known.get(id(limit))
            if found is None or found[0] is not limit:  # an id a limit no longer here had
                found = self._read_of(limit)
            _, names, may_refuse, rolling = found
            if not names:
                op.checks.append(None)  # a per-request cap reads nothing
                continue
            if len(names) == 1:  # the live leases of a series
                z = names[0]
                step = at(z)
                # positional, as step.lua reads a check
                lease = ["l", step.key(z), check.amount, limit.value, int(enforce and may_refuse)]
                op.checks.append((step, step.add("checks", lease), [], True))
                continue
            step = at(names[0])
            counter, hz, ha = step.keys_of(names)
            # the buckets a check sums: each step of a rolling window, else its one bucket
            lo = check.lo
            fields = list(range(lo, check.hi + 1, rolling)) if rolling else [lo]
            kind, used, held = "w", 0, 0
            if guards is not None and i >= first_guard:
                seen = guards[i - first_guard]
                kind, used, held = "g", sum(seen.buckets.values()), seen.reserved
            landed = check.bucket is not None
            # positional, as step.lua reads a check: the buckets come last
            spec: list[Any] = [
                kind,
                counter,
                hz,
                ha,
                check.amount if landed else 0,
                limit.value,
                int(enforce and may_refuse and landed),  # the rule of decisions.blocks
                used,
                held,
                *map(str, fields),
            ]
            op.checks.append((step, step.add("checks", spec), fields, False))

    def _read_of(self, limit: EffectiveLimit) -> Read:
        """What reading a limit takes: the key names (none for a per-request cap, the
        leases of a concurrency limit, else the counter and the holds), whether it may
        refuse (not shadow, not unlimited) and a rolling window's bucket seconds."""
        series, metric, window, _ = limit.names()  # text, built once per limit
        key = limit.key
        names: tuple[str, ...] = ()
        if key.metric is Metric.CONCURRENT_REQUESTS:
            names = (self.layout.leases(series),)
        elif window is not None:
            names = (
                self.layout.counter(series, metric, window),
                *self.layout.holds(series, metric),
            )
        rolling = key.window.bucket_seconds if key.window and key.window.rolling_seconds else 0
        found = (limit, names, not (limit.shadow or limit.unlimited), rolling)
        if len(self._reads) >= NAMES_KEPT:
            self._reads.clear()
        self._reads[id(limit)] = found
        return found

    def add_wallets(
        self,
        op: Op,
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

    def answers(self, op: Op, replies: list[Reply]) -> tuple[list[Reading], list[Prepaid]]:
        """Each check's reading and each wallet's balance, in the order they were added."""
        steps = op.steps.ordered()
        # each step's readings, split once (a consume has four checks in one step)
        read = {id(s): split(r.readings) for s, r in zip(steps, replies, strict=True)}
        readings = []
        for entry in op.checks:
            if entry is None:
                readings.append(Reading())
                continue
            step, pos, fields, lease = entry
            readings.append(parse_reading(read[id(step)][pos], fields, lease))
        prepaid: list[Prepaid] = []
        if not op.wallets:
            return readings, prepaid
        by_step = dict(zip(map(id, steps), replies, strict=True))
        for step, pos, subject, mine in op.wallets:
            remaining, held = parse_wallet(split(by_step[id(step)].wallets)[pos])
            grants = tuple(
                Grant(g.id, g.subject, g.amount, g.granted_at, g.expires_at, r)
                for g, r in zip(mine, remaining, strict=True)
            )
            prepaid.append(Prepaid(subject, grants, held))
        return readings, prepaid

    def used(self, op: Op, replies: list[Reply]) -> list[int] | None:
        """What ``decisions.admitted`` takes from the replies (``layout.counts``)."""
        return counts(op.checks, op.steps.ordered, replies)

    def add_increments(
        self, op: Op, plan: DebitPlan, tracked: Tracking
    ) -> tuple[Counting, list[Placed]]:
        """The counters a usage adds to (``domain.ledger.increments``), through the
        plan's ``Counting`` shape: its counters named once, their buckets placed once
        per span of time."""
        units = dict(plan.amounts.items())  # one C lookup per counter below
        metrics = tuple([m for m, v in units.items() if v])  # a list first: no generator
        series = plan.series
        limits = tuple([c.limit for c in plan.checks])
        # The limits by identity (a limit's hash is computed in Python); the entry
        # keeps them, so an id in the key cannot be another limit's while it is here.
        shape_key = (tracked, series, metrics, *map(id, limits))
        shape = self._counting.get(shape_key)
        if shape is None or shape.limits != limits:
            if len(self._counting) >= SHAPES_KEPT:
                self._counting.clear()
            shape = self._counting[shape_key] = Counting(
                limits, self._counters(tracked, limits, series, metrics)
            )
        placed = shape.placed(plan.timestamp, self.db.tz)
        if not placed:
            return shape, placed
        steps = op.steps
        if steps.single:
            steps.at(placed[0][0]).count(placed, units)
            return shape, placed
        for entry in placed:  # a cluster: each counter in the step of its slot
            steps.at(entry[0]).count((entry,), units)
        return shape, placed

    def _counters(
        self,
        tracked: Tracking,
        limits: Sequence[EffectiveLimit],
        series: Sequence[str],
        metrics: Sequence[Metric],
    ) -> list[Counter]:
        """Every counter a usage of ``metrics`` adds to, as ``increments`` lists them:
        per (metric, window), each series whose kind counts it (once, counted as
        often as the series is charged). A limit's own pair is counted in its
        series too (tracked with it at the plan's version, which the step checks)."""
        pairs = [set(tracked.of_series(s)) for s in series]
        for limit in limits:
            name = limit.names()[0]
            for subject, mine in zip(series, pairs, strict=True):
                if subject == name:
                    mine.add(limit.key)
        out: dict[str, Counter] = {}
        for key in set().union(*pairs):
            window = key.window
            if window is None or key.metric not in metrics:
                continue
            metric = key.metric._value_
            for subject, mine in zip(series, pairs, strict=True):
                if key not in mine:
                    continue
                name = self.layout.counter(subject, metric, window.key)
                found = out.get(name)
                cap = f"{metric}|{subject}" if window.key == "total" else None
                times = found[3] + 1 if found is not None else 1
                out[name] = (window, name, key.metric, times, cap)
        return list(out.values())

    def add_event(self, step: Step, shard: int, body: dict[str, Any] | bytes) -> None:
        """The ledger event ``step`` appends to the shard's stream: its row (or that
        row's JSON already, ``add_usage``)."""
        step.spec["seq"] = step.key(self.layout.seq(shard))
        # plain values, not an object: step.lua's decode builds a table per object
        spec = step.spec
        spec["evs"] = step.key(self.layout.stream(shard))
        spec["evn"] = shard
        spec["evm"] = self.layout.shards
        if type(body) is bytes:
            step.body = body
            return
        try:
            step.body = orjson.dumps(body)
        except TypeError:  # an integer past 64 bits, text orjson refuses: the slower encoder
            step.body = json.dumps(body, separators=(",", ":"))

    def add_usage(self, step: Step, shard: int, plan: DebitPlan) -> None:
        """``add_event`` of a consume of ``plan``, its JSON framed once per shape (bodies.py)."""
        body = self._bodies.of(plan)
        self.add_event(step, shard, row_of(plan) if body is None else body)

    def add_alerts(self, op: Op, step: Step, shard: int, plan: DebitPlan) -> None:
        """The threshold alerts ``plan`` may record, added by the ledger ``step`` to the
        shard's alert stream only when it commits (step.lua; the mover takes them to SQL).

        A check read in the ledger step itself (one Redis: all of them) is decided
        there, against the usage the script reads. On a cluster a check's step runs
        before the ledger step and has committed its counters by then: its reading is
        the usage the request was added to, so ``before_ledger`` computes its
        crossings here (domain/alerts.py) and hands the ledger step the events.
        """
        entries: list[list[Any]] = []
        earlier: list[int] = []
        for i, threshold_mark, event in threshold_candidates(plan):
            entry = op.checks[i]
            assert entry is not None  # a windowed check reads buckets
            if entry[0] is not step:
                if i not in earlier:
                    earlier.append(i)
                continue
            check = plan.checks[i]
            window = check.limit.key.window
            assert window is not None
            body = json.dumps(alert_row(event), separators=(",", ":"))
            entries.append(
                [entry[1] + 1, threshold_mark, body, check.bucket, window.rolling_seconds]
            )
        spec = step.spec["alerts"] = {"s": step.key(self.layout.alerts(shard)), "e": entries}

        def decided(steps: list[Step], replies: list[Reply]) -> None:
            by_step = {id(s): r for s, r in zip(steps, replies, strict=True)}
            for i in earlier:
                step_of, pos, fields, lease = op.checks[i]  # type: ignore[misc]
                reading = parse_reading(split(by_step[id(step_of)].readings)[pos], fields, lease)
                for event in crossings(plan, i, reading):
                    spec["e"].append([0, 0, json.dumps(alert_row(event), separators=(",", ":"))])

        if earlier:
            op.before_ledger = decided

    def ledger_step(self, op: Op, shard: int, key: str, *, version: str | None = None) -> Step:
        """The step that makes an operation count; ``version`` (the plan's) is checked in it."""
        step = op.steps.ledger(key)
        step.spec["seq"] = step.key(self.layout.seq(shard))
        if version is not None:
            step.spec["cfgk"] = step.key(self.layout.config(shard))
            step.spec["cfgv"] = version
        return step

    def places(self, op: Op) -> tuple[list[CheckPlace], list[WalletPlace]]:
        """Where each check's and wallet's answer comes back, by step index."""
        index = {id(step): i for i, step in enumerate(op.steps.ordered())}
        checks: list[CheckPlace] = [
            None if e is None else (index[id(e[0])], e[1], e[2], e[3]) for e in op.checks
        ]
        wallets: list[WalletPlace] = [
            (index[id(step)], pos, subject, mine) for step, pos, subject, mine in op.wallets
        ]
        return checks, wallets

    def execute_ledger_first(self, op: Op, now: datetime) -> list[Reply]:
        """For commit: the record step decides (one commit wins); the rest cannot refuse."""
        steps = op.steps.ordered()
        steps = [steps[-1], *steps[:-1]]
        first = self.run(steps[0], now)
        replies = [first]
        if first.status == "ok":
            replies += [self.run(s, now) for s in steps[1:]]
        else:
            replies += [self.run(s, now, dry=True) for s in steps[1:]]
        # _answers expects the usual order: ledger step last
        return [*replies[1:], replies[0]] if len(replies) > 1 else replies


def refuse_too_large(replies: Sequence[Reply]) -> None:
    """A step found a lifetime counter without room for the amount: a 422, nothing kept."""
    for reply in replies:
        if reply.status == "too_large":
            metric, series = reply.extra.split("|", 1)
            raise too_large(Metric(metric), series)


def back_off(attempt: int) -> None:
    """A random pause, growing with each lost round and capped at BACK_OFF_CAP.

    Without it, requests racing for one busy resource re-read and retry in
    lockstep, each invalidating the others' reads, and some run out of rounds.
    Measured with 18 threads on one resource of a 3-node cluster
    (tests/test_concurrency.py): the most rounds one request needed fell from
    32-40 to 9-16, and the 50-round limit was once hit without it.
    """
    time.sleep(random.uniform(0, min(BACK_OFF_CAP, 0.001 * 2**attempt)))
