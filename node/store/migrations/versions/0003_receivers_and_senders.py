"""Receiving in several processes and on several nodes sharing one database: each
receiving process's heartbeat (`receivers`) and the open associations sending a series
(`senders`), which completion waits for (node.store.senders).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receivers",
        sa.Column("name", sa.String(length=96), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_receivers_last_seen", "receivers", ["last_seen"])
    op.create_table(
        "senders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("receiver", sa.String(length=96), nullable=False),
        sa.Column("association", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_id", "receiver", "association"),
    )
    op.create_index("ix_senders_series_id", "senders", ["series_id"])
    op.create_index("ix_senders_receiver", "senders", ["receiver"])


def downgrade() -> None:
    op.drop_table("senders")
    op.drop_table("receivers")
