"""The radiologist's verdict: reader accounts with a hashed token each (`readers`) and their
verdicts on the findings (`verdicts`), node.store.readers and node.store.verdicts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=True),
        sa.Column("token_created_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("series_version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("finding_key", sa.String(length=64), nullable=False),
        sa.Column("finding_type", sa.String(length=32), nullable=False),
        sa.Column("ai_value", sa.String(length=128), nullable=False),
        sa.Column("ai_volume_ml", sa.Float(), nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("backend_version", sa.String(length=128), nullable=False),
        sa.Column("pipeline_version", sa.String(length=32), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("corrected_volume_ml", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("superseded_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["reader_id"], ["readers.id"]),
        sa.ForeignKeyConstraint(["superseded_by_id"], ["verdicts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_verdicts_study_uid", "verdicts", ["study_uid"])
    op.create_index("ix_verdicts_job_id", "verdicts", ["job_id"])
    op.create_index("ix_verdicts_finding_type", "verdicts", ["finding_type"])
    op.create_index("ix_verdicts_reader_id", "verdicts", ["reader_id"])
    op.create_index("ix_verdicts_created_at", "verdicts", ["created_at"])


def downgrade() -> None:
    op.drop_table("verdicts")
    op.drop_table("readers")
