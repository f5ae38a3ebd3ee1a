"""An index on alert_events (subject, id): a subject's alerts, newest first, without a scan.

Read by ``GET /v1/subjects/{ref}/alerts`` and the dashboard's subject page.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_alert_events_subject_id", "alert_events", ["subject", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_events_subject_id", table_name="alert_events")
