"""The initial schema: subjects, rules, plans, counters, ledger, idempotency, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

REF = sa.String(161)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("ref", REF, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("plan_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("ref", name="pk_subjects"),
    )
    op.create_index("ix_subjects_kind", "subjects", ["kind"])
    op.create_index("ix_subjects_plan_id", "subjects", ["plan_id"])
    op.create_table(
        "subject_parents",
        sa.Column("child", REF, nullable=False),
        sa.Column("parent", REF, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("child", "parent", name="pk_subject_parents"),
    )
    op.create_index("ix_subject_parents_parent", "subject_parents", ["parent"])
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.UniqueConstraint("name", name="uq_plans_name"),
    )
    op.create_table(
        "rules",
        sa.Column("layer", sa.String(16), nullable=False),
        sa.Column("scope", REF, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("layer", "scope", "metric", "window", name="pk_rules"),
    )
    op.create_table(
        "tracked",
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("metric", "window", name="pk_tracked"),
    )
    op.create_table(
        "counters",
        sa.Column("subject", REF, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.Column("bucket", sa.BigInteger, nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("subject", "metric", "window", "bucket", name="pk_counters"),
    )
    op.create_table(
        "events",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", REF, nullable=False),
        sa.Column("charged", sa.JSON, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("amounts", sa.JSON, nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_table(
        "event_subjects",
        sa.Column("subject", REF, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("subject", "ts", "event_id", name="pk_event_subjects"),
    )
    op.create_table(
        "idempotency",
        sa.Column("subject", REF, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("decision", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("subject", "key", name="pk_idempotency"),
    )
    op.create_index("ix_idempotency_created_at", "idempotency", ["created_at"])
    op.create_table(
        "audit",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", REF, nullable=False),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_target", "audit", ["target"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )
    op.create_table(
        "shadow_hits",
        sa.Column("subject", REF, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.Column("hits", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("subject", "metric", "window", name="pk_shadow_hits"),
    )


def downgrade() -> None:
    for table in (
        "shadow_hits",
        "meta",
        "audit",
        "idempotency",
        "event_subjects",
        "events",
        "counters",
        "tracked",
        "rules",
        "plans",
        "subject_parents",
        "subjects",
    ):
        op.drop_table(table)
