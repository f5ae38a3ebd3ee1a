"""Where everything lives in Redis, and how one operation splits into script steps.

Every key carries a hash tag, so Redis Cluster places together what one
script must touch:

- ``{subject}`` for a subject's counters, holds, leases and grants. A
  consumer's share of a resource (``resource:gpu~user:ann``) is tagged with
  the resource, so a capacity test reads all the shares of one resource in
  one slot.
- ``{L<n>}`` for ledger shard ``n`` (one on a single Redis): its event
  sequence, its event stream, idempotency records and reservation and lease
  records. A request picks its shard from its idempotency key (or its
  hold's id), so a retry always lands where the first attempt did.

docs/redis.md lists the keys with their types.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenquota.domain.clock import from_micros
from tokenquota.domain.decisions import Reading
from tokenquota.domain.frozen import builder

# A cluster spreads the ledger over this many shards; a single Redis keeps one,
# so its event ids follow the order events happened in exactly.
CLUSTER_SHARDS = 16


def tag_of(series: str) -> str:
    """The hash tag of a counter series: a subject, or the resource of a share."""
    return series.split("~", 1)[0]


# Key names kept by a layout before its caches start again: the hot path names
# the same few counters on every call, and a bound keeps a store that sees
# millions of subjects from keeping every name it ever built.
NAMES_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str
    shards: int = 1
    # Counter and hold key names, built once: a consume names a dozen counters,
    # and formatting them was a measurable part of the client's work per call.
    _counters: dict[tuple[str, str, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _holds: dict[tuple[str, str], tuple[str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _shard_keys: dict[tuple[int, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def shard_of(self, routing: str) -> int:
        return zlib.crc32(routing.encode()) % self.shards

    def _key(self, tag: str, rest: str) -> str:
        return f"{self.prefix}:{{{tag}}}:{rest}"

    def counter(self, series: str, metric: str, window: str) -> str:
        known = self._counters.get((series, metric, window))
        if known is None:
            if len(self._counters) >= NAMES_KEPT:
                self._counters.clear()
            known = self._key(tag_of(series), f"c:{series}:{metric}:{window}")
            self._counters[series, metric, window] = known
        return known

    def holds(self, series: str, metric: str) -> tuple[str, str]:
        """A sorted set of reservation ids by expiry, and a hash of their amounts."""
        known = self._holds.get((series, metric))
        if known is None:
            if len(self._holds) >= NAMES_KEPT:
                self._holds.clear()
            tag = tag_of(series)
            known = self._key(tag, f"hz:{series}:{metric}"), self._key(tag, f"ha:{series}:{metric}")
            self._holds[series, metric] = known
        return known

    def leases(self, series: str) -> str:
        return self._key(tag_of(series), f"lz:{series}")

    def grants(self, subject: str) -> str:
        return self._key(subject, f"g:{subject}")

    def ledger(self, shard: int, rest: str) -> str:
        return self._key(f"L{shard}", rest)

    def _shard_key(self, shard: int, rest: str) -> str:
        """One of a shard's own keys (its sequence, stream...), named once: every
        operation names two or three of them."""
        known = self._shard_keys.get((shard, rest))
        if known is None:
            known = self._shard_keys[shard, rest] = self.ledger(shard, rest)
        return known

    def seq(self, shard: int) -> str:
        return self._shard_key(shard, "seq")

    def stream(self, shard: int) -> str:
        return self._shard_key(shard, "events")

    def idem(self, subject: str, key: str) -> tuple[int, str]:
        shard = self.shard_of(f"{subject}\n{key}")
        return shard, self.ledger(shard, f"i:{subject}:{key}")

    def record(self, kind: str, record_id: str) -> tuple[int, str]:
        shard = self.shard_of(record_id)
        return shard, self.ledger(shard, f"{kind}:{record_id}")

    def alerts(self, shard: int) -> str:
        """A stream of shard ``shard``'s alert events (threshold crossings), for the mover."""
        return self._shard_key(shard, "alerts")

    def quarantine(self, shard: int) -> str:
        """A stream of shard ``shard``'s events the SQL ledger refused, kept for an operator."""
        return self.ledger(shard, "quarantine")

    def config(self, shard: int) -> str:
        """A token that changes with every configuration write (limits, subjects...)."""
        return self._shard_key(shard, "cfg")

    def epoch(self) -> str:
        return self.ledger(0, "epoch")

    def deployment(self) -> str:
        """The id of the deployment (SQL database) this keyspace belongs to."""
        return self.ledger(0, "deployment")

    def pattern(self, what: str) -> str:
        """A SCAN pattern for one kind of subject key (c, hz, ha, lz, g) or ledger key."""
        return f"{self.prefix}:{{*}}:{what}:*"


# Reading(...) without its frozen __init__ (domain/frozen.py): four a consume.
_reading = builder(Reading)

# Ops whose entries the spec keeps as one flat list, as step.lua reads them:
# cjson builds a Lua table per array, and these are the most numerous.
FLAT = ("incr", "cap")


@dataclass
class Step:
    """One script call: the keys it names and the spec it runs (see step.lua).

    ``incr`` (key, bucket, delta) and ``cap`` (key, field, amount, name: a
    lifetime counter, added and checked against 2^63 - 1) are kept flat in the
    spec, entry after entry; every other op is a list of entries.
    """

    keys: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    body: str | bytes = ""  # the ledger event's JSON, ARGV[2]: not encoded again in the spec
    _index: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> int:
        """The 1-based position of ``name`` in KEYS, added on first use."""
        found = self._index.get(name)
        if found is None:
            self.keys.append(name)
            found = self._index[name] = len(self.keys)
        return found

    def keys_of(self, names: Sequence[str]) -> list[int]:
        """``key`` of each name, in one call: a check names three keys."""
        index, keys = self._index, self.keys
        out = []
        for name in names:
            found = index.get(name)
            if found is None:
                keys.append(name)
                found = index[name] = len(keys)
            out.append(found)
        return out

    def add(self, op: str, value: Any) -> int:
        """Append to a list op; returns the position (0-based) within that list.

        For a flat op (``FLAT``) ``value`` is one entry's values, appended in place.
        """
        ops: list[Any] = self.spec.setdefault(op, [])
        if op in FLAT:
            ops += value
            return 0
        ops.append(value)
        return len(ops) - 1

    def count(self, placed: Iterable[Sequence[Any]], units: Mapping[Any, int]) -> None:
        """Add increments: per entry (key name, bucket, metric, times, lifetime label or
        None), ``units[metric] * times`` to the bucket, as ``incr``, or for a lifetime
        counter as ``cap``, which step.lua adds with its 63-bit check. The loop of
        ``key`` and ``add``, inline: a consume adds a dozen."""
        index, keys, spec = self._index, self.keys, self.spec
        incr: list[Any] = spec.setdefault("incr", [])
        for name, bucket, metric, times, cap in placed:
            kidx = index.get(name)
            if kidx is None:
                keys.append(name)
                kidx = index[name] = len(keys)
            delta = str(units[metric] * times)
            if cap is None:
                incr += (kidx, bucket, delta)
            else:  # a lifetime counter: step.lua adds it with the bound's check
                spec.setdefault("cap", []).extend((kidx, bucket, delta, cap))

    def argv(self, now: int, *, dry: bool = False) -> list[str | bytes]:
        """ARGV for step.lua: the spec and the event body."""
        spec = {**self.spec, "now": now, "dry": dry}
        try:
            encoded: str | bytes = orjson.dumps(spec)
        except TypeError:  # an integer past 64 bits (a guard's sum of many buckets)
            encoded = json.dumps(spec, separators=(",", ":"))
        return [encoded, self.body]


class Steps:
    """Splits one operation into steps: one for all of it on a single Redis,
    one per hash slot on a cluster, with the ledger step always last."""

    def __init__(self, slot_of: Callable[[str], int] | None) -> None:
        self._slot_of = slot_of
        self._steps: dict[int, Step] = {}
        self._ledger_slot: int | None = None

    @property
    def single(self) -> bool:
        """One Redis, not a cluster: every key of an operation is in its one step."""
        return self._slot_of is None

    def at(self, key: str) -> Step:
        slot = self._slot_of(key) if self._slot_of else 0
        step = self._steps.get(slot)
        if step is None:
            step = self._steps[slot] = Step()
        return step

    def ledger(self, key: str) -> Step:
        step = self.at(key)
        self._ledger_slot = self._slot_of(key) if self._slot_of else 0
        return step

    def ordered(self) -> list[Step]:
        """Ascending slot order (one global order, so steps never wait on each other
        in a cycle), the ledger step last: it is what makes the operation count."""
        if len(self._steps) == 1:
            return list(self._steps.values())
        slots = sorted(s for s in self._steps if s != self._ledger_slot)
        if self._ledger_slot is not None:
            slots.append(self._ledger_slot)
        return [self._steps[s] for s in slots]


@dataclass(frozen=True, slots=True)
class Reply:
    status: str  # ok | denied | replay | state | conflict | lost
    event_id: int
    readings: str
    wallets: str
    extra: str  # burned credits on ok, the fingerprint on replay
    decision: str = ""  # on replay: the first answer as JSON, if an older version stored it
    plan: str = ""  # on replay: the plan the first answer was decided on (redis/answers.py)
    pre: str = ""  # on replay: what the earlier steps of a cluster read, as JSON

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> Reply:
        if type(raw[0]) is str:  # the line's reader decodes (line.py): every value is text
            return _reply(raw[0], int(raw[1] or 0), *raw[2:8])  # but an event id of 0
        status, eid, *rest = [v.decode() if isinstance(v, bytes) else str(v) for v in raw[:8]]
        return _reply(status, int(eid or 0), *rest)


_reply = builder(Reply)  # one a step: Reply(...) without its frozen __init__


def split(text: str) -> list[str]:
    return text.split("|") if text else []


def parse_reading(text: str, fields: Sequence[int], lease: bool) -> Reading:
    values, held, last = text.split(";")
    if lease:
        count = int(values)
        if not count:
            return _reading({})
        return _reading({0: count}, 0, from_micros(int(last)))
    buckets = {}
    if len(fields) == 1:  # a calendar window: its one bucket, the common case
        units = int(values)
        if units:
            buckets[fields[0]] = units
    elif values:
        for f, v in zip(fields, values.split(","), strict=True):
            units = int(v)
            if units:
                buckets[f] = units
    if held == "0" or not int(held):  # "0": how step.lua writes none, the common case
        return _reading(buckets)
    return _reading(buckets, int(held), from_micros(int(last)))


def counts(
    checks: Sequence[tuple[Step, int, list[int], bool] | None],
    steps: Callable[[], list[Step]],
    replies: Sequence[Reply],
) -> list[int] | None:
    """What ``decisions.admitted`` takes, straight from the replies: per check (an
    operation's, where each comes back: ``shapes.Op.checks``) the units its one bucket
    held, or 0 for a per-request cap, which reads nothing. For the operation of a
    placed plan (``DebitPlan.placement``: calendar and ``total`` windows and caps,
    never a lease), as ``admitted`` requires; ``steps`` lists the operation's steps.

    None when a check is read otherwise: a live hold on its series (the script
    reports the held sum, which ``admitted`` does not take), several buckets (a
    rolling window) or leases; then ``parse_reading`` and ``decide`` do. No
    ``Reading`` is built: that was about a tenth of a warm consume's Python
    (session 12).
    """
    if len(replies) == 1 and checks and None not in checks:
        # One step reading a bucket per check, in order: "units;0;0" each when no
        # hold is live (step.lua writes held and last expiry as "0"). Dropping
        # those leaves the units alone; anything else (a hold, a lease's expiry,
        # several buckets) keeps a ";" or a "," and goes the long way below.
        bare = replies[0].readings.replace(";0;0", "")
        if ";" not in bare and "," not in bare:
            found = bare.split("|")
            if len(found) == len(checks):
                return list(map(int, found))
    ordered = steps()
    texts = {id(s): split(r.readings) for s, r in zip(ordered, replies, strict=True)}
    out = []
    for entry in checks:
        if entry is None:
            out.append(0)
            continue
        step, pos, fields, lease = entry
        if lease or len(fields) != 1:
            return None
        values, held, _ = texts[id(step)][pos].split(";")
        if held != "0":  # how step.lua writes none
            return None
        out.append(int(values))
    return out


def parse_wallet(text: str) -> tuple[list[int], int]:
    remaining, held = text.split(";")
    return [int(v) for v in remaining.split(",")] if remaining else [], int(held)
