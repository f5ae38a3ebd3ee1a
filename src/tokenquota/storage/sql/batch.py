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
3. the writes of the admitted ones are queued as one batch: every event, link,
   subject, shadow hit, idempotency answer and alert as a debit writes them,
   and the counters and grant burns of the whole run summed, one upsert of
   counters and one update per grant, sent with the next step's reads or the
   batch's COMMIT; no caller is answered before that COMMIT (``group.py``).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenquota.domain.alerts import alert_events
from tokenquota.domain.bounds import check_lifetime
from tokenquota.domain.decisions import DebitPlan, Decision, decide
from tokenquota.domain.ledger import increments, usage_event
from tokenquota.domain.metrics import Metric
from tokenquota.storage.snapshot import View
from tokenquota.storage.sql.group import Job
from tokenquota.storage.sql.hot import HotTx, burns_of
from tokenquota.storage.sql.reads import Reads, Seen
from tokenquota.storage.sql.statements import Stmt
from tokenquota.wire import stored

if TYPE_CHECKING:
    from tokenquota.storage.sql.meter import SqlMeter


@dataclass(frozen=True, slots=True)
class Debit:
    """What a queued consume is, for a run to decide it (``Job.batchable``)."""

    plan: DebitPlan
    create: bool


def run_debits(meter: SqlMeter, tx: HotTx, jobs: Sequence[Job[Any]]) -> None:
    """Decide the debits of ``jobs`` (each ``batchable`` a ``Debit``) as described above."""
    assert tx.sql.postgres, "SQLite numbers events as it writes them: a debit at a time"
    snapshot = meter.catalog.snapshot
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
    at = 0
    for job, view, r in zip(jobs, views, reads, strict=True):
        mine = cursors[at : at + len(r.stmts)]
        at += len(r.stmts)
        try:
            job.result = _decide(meter, tx, view, since, job.batchable, r, mine, seen, writes)
        except Exception as exc:
            job.error = exc
    if seen.deltas:
        writes.append(tx.sql.bumps(seen.deltas))
    writes += [(tx.sql.burn, (units, gid)) for gid, units in seen.burns.items()]
    tx.pending += writes


def _decide(
    meter: SqlMeter,
    tx: HotTx,
    view: View | None,
    since: float,
    debit: Debit,
    reads: Reads,
    cursors: list[Any],
    seen: Seen,
    writes: list[Stmt],
) -> Decision:
    """One debit of the run, as ``SqlMeter._debit`` decides it; what it writes is added
    to ``writes`` (counters and burns to ``seen``, summed) only once it is decided."""
    plan, create = debit.plan, debit.create
    found = reads.found(cursors, seen)
    if view is not None and plan.config_version is not None:
        version = plan.config_version
        view.cached(("tracked",), lambda: (version, frozenset(tx.tracked())))
    meter.catalog.snapshot.confirm(plan.config_version, since)
    replay = found.replayed(plan.fingerprint)
    if replay is not None:
        return replay
    meter._known(found, plan, create)
    check_lifetime(plan.series, plan.amounts, found.lifetime)
    decision = decide(plan, found.readings, prepaid=found.prepaid)

    usage = decision.allowed
    new_subject = create and not found.subject_known
    deltas = (
        increments(plan.series, plan.amounts, plan.timestamp, meter.db.tz, tx.tracked())
        if usage
        else {}
    )
    burns = (
        burns_of(found.grants, plan.charged, plan.amounts[Metric.CREDITS], plan.now)
        if usage
        else {}
    )
    keyed = usage and plan.idempotency_key is not None
    mine: list[Stmt] = []
    event_id = tx.write(
        subject=plan.subject if new_subject else None,
        now=plan.now,
        shadow=decision if decision.shadow_blocked else None,
        event=usage_event(plan, None) if usage else None,
        event_id=found.event_id,
        deltas={},  # summed over the run (``run_debits``)
        burns={},
        remember=(
            (str(plan.subject), plan.idempotency_key, plan.fingerprint, decision)
            if keyed and plan.idempotency_key
            else None
        ),
        out=mine,
    )
    alerts = alert_events(plan, found.readings, decision)
    if alerts:  # in this transaction: recorded if, and only if, the decision is
        tx.alerts(meter.alerted.fresh(alerts), out=mine)
    answer = decision.numbered(event_id) if usage else decision

    # Decided: from here on the debits after it read as if it were written.
    writes += mine
    seen.add(deltas, burns)
    if new_subject:
        seen.subjects.add(str(plan.subject))
    if keyed and plan.idempotency_key:
        stored_answer = json.loads(json.dumps(stored.encode_decision(answer)))
        seen.remembered[(str(plan.subject), plan.idempotency_key)] = (
            plan.fingerprint,
            stored_answer,
        )
    return answer
