"""Threshold alerts: thresholds on rules, the alert outbox, webhook endpoints and deliveries.

``rules.thresholds`` holds a rule's alert thresholds as whole percentages
("50,80,100"), NULL when it has none. ``alert_events`` is the outbox: a row is
written in the same transaction as the decision that crossed a threshold (or
was denied, or was shadow-blocked), and ``dedupe`` is unique so a threshold is
recorded once per window period however many replicas race the crossing.
``webhook_endpoints`` are where events go; the signing secret is never stored in
clear: it is derived from the server's key and the endpoint id, or (a secret the
user brought) kept in ``sealed_secret``, AES-GCM sealed under the server's key.
``webhook_deliveries`` is one row per (event, endpoint), the state the delivery
worker claims, retries and dead-letters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

REF = sa.String(161)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("rules") as batch:
        batch.add_column(sa.Column("thresholds", sa.String(64), nullable=True))
    op.create_table(
        "alert_events",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("dedupe", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", REF, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=True),
        sa.Column("threshold", sa.Integer, nullable=True),
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.Column("limit_value", sa.BigInteger, nullable=False),
        sa.Column("reset_at", sa.BigInteger, nullable=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_alert_events"),
        sa.UniqueConstraint("dedupe", name="uq_alert_events_dedupe"),
    )
    op.create_index("ix_alert_events_fanned_out", "alert_events", ["fanned_out"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.String(128), nullable=False),
        sa.Column("owner", REF, nullable=True),
        sa.Column("description", sa.String(256), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("disabled_at", sa.BigInteger, nullable=True),
        sa.Column("sealed_secret", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("endpoint_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("claimed_until", sa.BigInteger, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
        sa.Column("last_attempt_at", sa.BigInteger, nullable=True),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint(
            "event_id", "endpoint_id", name="uq_webhook_deliveries_event_id_endpoint_id"
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index("ix_webhook_deliveries_endpoint_id", "webhook_deliveries", ["endpoint_id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("alert_events")
    with op.batch_alter_table("rules") as batch:
        batch.drop_column("thresholds")
