"""A run of consumes in one group-commit batch, decided from one read and one write (PostgreSQL).

Under load every decision of a batch often touches the same series (one
user's, one company's), and on PostgreSQL each decision's reads cost a round
trip while the batch holds the series locks: that serial section is what
caps a busy subject (docs/performance-log.md, branch ``p2`` and ``sql``). So
consecutive debits of a batch are decided together:

1. the reads of every debit of the run go out in one pipeline (the same
   statements a lone debit sends: ``hot.Reads``), under the batch's locks,
   after whatever the steps before it wrote;
2. each debit is decided in order in memory, reading what the store answered
   *plus what the debits before it in the run decided* (``hot.Seen``: their
   counter increments, grant burns, created subjects and stored idempotency
   answers), so each gets the answer it would have got alone, after them:
   the same admissions, denials, replays, conflicts and alert events;
3. the writes are queued as one statement, the one a lone debit writes
   (``PostgresSql.record``): the events of the admitted ones with their
   links and idempotency answers, the counters and grant burns of the whole
   run summed (one upsert row per counter, one update per grant); created
   subjects, shadow hits and alert rows (rare) one statement each, as a lone
   debit writes them. They go with the next step's reads or the batch's
   COMMIT; no caller is answered before that COMMIT (``group.py``).

A debit whose decision fails (a stale configuration version, a conflicting
idempotency key, an unknown subject, an amount past the 63-bit bound) wrote
nothing and left nothing in ``Seen``: its error is its caller's alone, as
under a savepoint. A read or write the server refuses fails the whole batch,
none of it committed or acknowledged. Only debits are run this way; holds
and leases keep the step-by-step path (``SqlMeter._batch``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from tokenquota.domain.alerts import alert_events
from tokenquota.domain.bounds import check_lifetime
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import DebitPlan, Decision, decide
from tokenquota.domain.ledger import usage_event
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.snapshot import Snapshot, View
from tokenquota.storage.sql.group import Job
from tokenquota.storage.sql.hot import HotTx, event_values
from tokenquota.storage.sql.outbox import Recorded
from tokenquota.storage.sql.reads import Reads, Seen, require_known
from tokenquota.storage.sql.statements import POSTGRES, Stmt
from tokenquota.wire import stored


@dataclass(slots=True)
class Rows:
    """The rows the admitted debits of a run add, written in one statement."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    remembers: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Debit:
    """What a queued consume is, for a run to decide it (``Job.batchable``)."""

    plan: DebitPlan
    create: bool


@dataclass(frozen=True, slots=True)
class Context:
    """What a run needs of its meter: the snapshot its plans came from, the store's
    time zone and the alerts this process recorded already."""

    snapshot: Snapshot
    tz: tzinfo
    alerted: Recorded


def run_debits(run: Context, tx: HotTx, jobs: Sequence[Job[Any]]) -> None:
    """Decide the debits of ``jobs`` (each ``batchable`` a ``Debit``) as described above."""
    assert tx.sql.postgres, "SQLite numbers events as it writes them: a debit at a time"
    snapshot = run.snapshot
    since = snapshot.monotonic()
    reads: list[Reads] = []
    views: list[View | None] = []
    for job in jobs:
        plan = job.batchable.plan
        view = snapshot.at(plan.config_version)
        if view is not None:
            tx.use_tracked(view.known(("tracked",)))
        views.append(view)
        reads.append(tx.reads(plan, numbered=True))
    # One round trip for the run (with what earlier steps left pending). An error
    # here is the batch's, not a debit's: it leaves and fails every caller.
    cursors = tx.run([stmt for r in reads for stmt in r.stmts])
    seen = Seen()
    writes: list[Stmt] = []
    rows = Rows()
    at = 0
    for job, view, r in zip(jobs, views, reads, strict=True):
        mine = cursors[at : at + len(r.stmts)]
        at += len(r.stmts)
        try:
            job.result = _decide(run, tx, view, since, job.batchable, r, mine, seen, writes, rows)
        except Exception as exc:
            job.error = exc
    if rows.events:  # counters, burns and answers come only with an event
        writes.append(POSTGRES.record(rows.events, seen.deltas, seen.burns, rows.remembers))
    tx.pending += writes


def _decide(
    run: Context,
    tx: HotTx,
    view: View | None,
    since: float,
    debit: Debit,
    reads: Reads,
    cursors: list[Any],
    seen: Seen,
    writes: list[Stmt],
    rows: Rows,
) -> Decision:
    """One debit of the run, as ``SqlMeter._debit`` decides it; what it writes is added
    to ``writes`` and ``rows`` (counters and burns to ``seen``, summed) only once it is
    decided."""
    plan, create = debit.plan, debit.create
    found = reads.found(cursors, seen)
    if view is not None and plan.config_version is not None:
        version = plan.config_version
        view.cached(("tracked",), lambda: (version, tx.tracked()))
    run.snapshot.confirm(plan.config_version, since)
    replay = found.replayed(plan.fingerprint)
    if replay is not None:
        return replay
    require_known(found, plan, create)
    check_lifetime(found.series or plan.series, plan.amounts, found.lifetime)
    decision = decide(plan, found.readings, prepaid=found.prepaid)

    usage = decision.allowed
    new_subject = create and not found.subject_known
    deltas, burns = tx.spent(plan, found, run.tz) if usage else ({}, {})
    mine: list[Stmt] = []
    tx.write(
        subject=plan.subject if new_subject else None,
        now=plan.now,
        shadow=decision if decision.shadow_blocked else None,
        event=None,  # with the run's other events, in one statement (``Rows``)
        event_id=None,
        deltas={},
        burns={},
        remember=None,
        out=mine,
    )
    alerts = alert_events(plan, found.readings, decision)
    if alerts:  # in this transaction: recorded if, and only if, the decision is
        tx.alerts(run.alerted.fresh(alerts), out=mine)
    if not usage:
        writes += mine
        if new_subject:
            seen.subjects.add(str(plan.subject))
        return decision
    event_id = found.event_id
    assert event_id is not None  # read numbered
    answer = decision.numbered(event_id)
    row = event_row(usage_event(plan, None))
    remembered: tuple[Any, ...] | None = None
    if plan.idempotency_key is not None:
        text = json.dumps(stored.encode_decision(answer))
        remembered = (
            str(plan.subject),
            plan.idempotency_key,
            plan.fingerprint,
            text,
            to_micros(plan.now),
        )

    # Decided: from here on the debits after it read as if it were written.
    writes += mine
    rows.events.append((event_id, *event_values(row)))
    seen.add(deltas, burns)
    if new_subject:
        seen.subjects.add(str(plan.subject))
    if remembered is not None:
        rows.remembers.append(remembered)
        seen.remembered[(remembered[0], remembered[1])] = (plan.fingerprint, json.loads(text))
    return answer
