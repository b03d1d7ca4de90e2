"""What was added since 0.1.0: a delivery attempt in doubt, a series version possibly
incomplete, and room for the outbox's `withdrawn` state.

outbox.attempt_started_at (node.store.outbox: an attempt cut off before its answer);
series.incomplete_reason and jobs.incomplete_reason (node.store.receiving: a version whose
receiving was cut short, its results held); outbox.state from 8 to 16 characters, so
that PostgreSQL holds `withdrawn` (9). The code between the release and the migrations
added the three columns itself: a column already there is left as it is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ADDED = [
    ("outbox", sa.Column("attempt_started_at", sa.Float(), nullable=True)),
    ("series", sa.Column("incomplete_reason", sa.Text(), nullable=True)),
    ("jobs", sa.Column("incomplete_reason", sa.Text(), nullable=True)),
]


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    for table, column in ADDED:
        if column.name not in _columns(table):
            op.add_column(table, column)
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("state", existing_type=sa.String(length=8),
                           type_=sa.String(length=16), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("state", existing_type=sa.String(length=16),
                           type_=sa.String(length=8), existing_nullable=False)
    for table, column in reversed(ADDED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column.name)
