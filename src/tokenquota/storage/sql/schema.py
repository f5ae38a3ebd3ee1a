"""Table definitions used to build queries.

The schema itself is created only by the Alembic migrations; a test runs
``alembic check`` so these definitions and the migrations cannot drift apart.
Times are integer microseconds since the epoch and amounts integer units
(see domain.metrics), which compare and add exactly on every dialect.
"""

from __future__ import annotations

import sqlalchemy as sa

# 64-bit ids on PostgreSQL; SQLite needs INTEGER for its rowid alias.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

subjects = sa.Table(
    "subjects",
    metadata,
    sa.Column("ref", sa.String(161), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("name", sa.String(256), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("plan_id", sa.String(32), nullable=True, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

subject_parents = sa.Table(
    "subject_parents",
    metadata,
    sa.Column("child", sa.String(161), primary_key=True),
    sa.Column("parent", sa.String(161), primary_key=True, index=True),
    sa.Column("position", sa.Integer, nullable=False),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# One table for the three layers: subject overrides, plan rules, kind defaults.
rules = sa.Table(
    "rules",
    metadata,
    sa.Column("layer", sa.String(16), primary_key=True),
    sa.Column("scope", sa.String(161), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False),
    # Alert thresholds as whole percentages, "50,80,100"; NULL when none (domain/alerts.py).
    sa.Column("thresholds", sa.String(64), nullable=True),
)

# The (metric, window) pairs counters are kept for, per kind of series: every pair
# a rule has named for a kind, "*" for every kind (plans; domain/tracking.py).
tracked = sa.Table(
    "tracked",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(32), primary_key=True),
)

# On SQLite this and event_subjects are WITHOUT ROWID: a consume upserts a dozen
# counters and a link per charged subject, and a rowid table would be a second
# b-tree (and a second dirty page in the commit) beside its key's index.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(32), primary_key=True),
    sa.Column("bucket", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sqlite_with_rowid=False,  # one b-tree in key order (migration 0007)
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(161), nullable=False),
    sa.Column("charged", sa.JSON, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False, index=True),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("amounts", sa.JSON, nullable=False),
    sa.Column("model", sa.String(128), nullable=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("resource", sa.String(161), nullable=True),
)

# One row per charged subject and event, so a company's history and export
# are an index range scan rather than a scan of every event.
event_subjects = sa.Table(
    "event_subjects",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),
    sa.Column("event_id", ID, primary_key=True),
    sqlite_with_rowid=False,  # one b-tree in key order (migration 0007)
)

idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("decision", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(161), nullable=False, index=True),
    sa.Column("before", sa.JSON, nullable=True),
    sa.Column("after", sa.JSON, nullable=True),
)

# Settings the data depends on; today the time zone calendar counters are kept in.
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

shadow_hits = sa.Table(
    "shadow_hits",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(32), primary_key=True),
    sa.Column("hits", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(161), nullable=True),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
)

# A reservation holds budget on every charged subject until committed, released
# or expired; expiry is judged at read time (expires_at > now), so no sweeper is
# needed for correctness.
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("subject", sa.String(161), nullable=False),
    sa.Column("charged", sa.JSON, nullable=False),
    sa.Column("amounts", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("decision", sa.JSON, nullable=True),
    sa.Column("resource", sa.String(161), nullable=True),
)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, primary_key=True),
    sa.Column("reservation_id", sa.String(32), primary_key=True, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("subject", sa.String(161), nullable=False),
    sa.Column("charged", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("released_at", sa.BigInteger, nullable=True),
    sa.Column("resource", sa.String(161), nullable=True),
)

lease_holders = sa.Table(
    "lease_holders",
    metadata,
    sa.Column("subject", sa.String(161), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, primary_key=True),
    sa.Column("lease_id", sa.String(32), primary_key=True, index=True),
)

# One quota per protected resource, kept whole as validated JSON: it is read as
# a unit on every request that names the resource.
resource_quotas = sa.Table(
    "resource_quotas",
    metadata,
    sa.Column("resource", sa.String(161), primary_key=True),
    sa.Column("quota", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# What is left of each grant is kept here, updated in the transaction that spends
# it; `rebuild` recomputes it from the ledger like every counter.
grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("subject", sa.String(161), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("granted_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("remaining", sa.BigInteger, nullable=False),
)

# The alert outbox (contract §9): written in the transaction of the decision that
# crossed a threshold, was denied or was shadow-blocked; ``dedupe`` makes a
# threshold's crossing one row per window period however many replicas race it.
alert_events = sa.Table(
    "alert_events",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("dedupe", sa.String(400), nullable=False, unique=True),
    # "threshold.crossed" is 17 characters: room for the AlertKind values and more.
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(161), nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("window", sa.String(32), nullable=False),
    sa.Column("period_start", sa.BigInteger, nullable=True),
    sa.Column("threshold", sa.Integer, nullable=True),
    sa.Column("used", sa.BigInteger, nullable=False),
    sa.Column("limit_value", sa.BigInteger, nullable=False),
    sa.Column("reset_at", sa.BigInteger, nullable=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false(), index=True),
    sa.Index("ix_alert_events_subject_id", "subject", "id"),
)

# Where alert events are sent. The signing secret is derived from the server's
# key and the id (domain/webhooks.py), or the user's own sealed under that key
# (engine/webhooks.py): never stored in clear.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("events", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(161), nullable=True),
    sa.Column("description", sa.String(256), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("disabled_at", sa.BigInteger, nullable=True),
    sa.Column("sealed_secret", sa.String(512), nullable=True),
)

# One row per (alert event, endpoint): what the delivery worker claims, retries
# with backoff and finally dead-letters.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("endpoint_id", sa.String(32), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    sa.Column("claimed_until", sa.BigInteger, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(512), nullable=True),
    sa.Column("last_attempt_at", sa.BigInteger, nullable=True),
    sa.Column("delivered_at", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("event_id", "endpoint_id"),
    sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)
