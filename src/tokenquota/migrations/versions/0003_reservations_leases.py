"""Reservations (holds on budget) and concurrency leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REF = sa.String(161)


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("subject", REF, nullable=False),
        sa.Column("charged", sa.JSON, nullable=False),
        sa.Column("amounts", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decision", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reservations"),
    )
    op.create_table(
        "holds",
        sa.Column("subject", REF, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("reservation_id", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "subject", "metric", "expires_at", "reservation_id", name="pk_holds"
        ),
    )
    op.create_index("ix_holds_reservation_id", "holds", ["reservation_id"])
    op.create_table(
        "leases",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("subject", REF, nullable=False),
        sa.Column("charged", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("released_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_leases"),
    )
    op.create_table(
        "lease_holders",
        sa.Column("subject", REF, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("lease_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("subject", "expires_at", "lease_id", name="pk_lease_holders"),
    )
    op.create_index("ix_lease_holders_lease_id", "lease_holders", ["lease_id"])


def downgrade() -> None:
    for table in ("lease_holders", "leases", "holds", "reservations"):
        op.drop_table(table)
