"""Shared-capacity quotas on protected resources (contract §6); events name their resource.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_quotas",
        sa.Column("resource", sa.String(161), nullable=False),
        sa.Column("quota", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("resource", name="pk_resource_quotas"),
    )

    for table in ("events", "reservations", "leases"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("resource", sa.String(161), nullable=True))


def downgrade() -> None:
    for table in ("events", "reservations", "leases"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("resource")
    op.drop_table("resource_quotas")
