"""The schema of the last release, 0.1.0 (commit 2ca9700), as its create_all made it.

A database made before the node had migrations has no alembic_version table, so Alembic
starts it here: only the tables it lacks are created (the release created a module's
table only when that module was imported), those it has are left as they are.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[tuple[str, list, list[tuple[str, list[str]]]]]:
    """(name, columns and constraints, indexes) of each table, parents first."""
    return [
        ("studies", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("study_uid"),
        ], []),
        ("series", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("study_id", sa.Integer(), nullable=False),
            sa.Column("series_uid", sa.String(length=64), nullable=False),
            sa.Column("modality", sa.String(length=16), nullable=True),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("instance_count", sa.Integer(), nullable=False),
            sa.Column("expected_count", sa.Integer(), nullable=True),
            sa.Column("first_received_at", sa.DateTime(), nullable=False),
            sa.Column("last_activity", sa.Float(), nullable=False),
            sa.Column("completed_at", sa.DateTime(), nullable=True),
            sa.Column("skip_reason", sa.Text(), nullable=True),
            sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("series_uid"),
        ], [("ix_series_state", ["state"]), ("ix_series_study_id", ["study_id"])]),
        ("instances", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
            sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("size_bytes", sa.Integer(), nullable=False),
            sa.Column("series_version", sa.Integer(), nullable=False),
            sa.Column("calling_ae", sa.String(length=16), nullable=True),
            sa.Column("geometry", sa.JSON(), nullable=True),
            sa.Column("received_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("sop_instance_uid"),
        ], [("ix_instances_series_id", ["series_id"])]),
        ("jobs", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("series_version", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("worker", sa.String(length=64), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("started_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("result", sa.JSON(), nullable=True),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("series_id", "series_version"),
        ], [("ix_jobs_series_id", ["series_id"]), ("ix_jobs_state", ["state"])]),
        ("workers", [
            sa.Column("name", sa.String(length=64), nullable=False),
            sa.Column("pid", sa.Integer(), nullable=False),
            sa.Column("started_at", sa.DateTime(), nullable=False),
            sa.Column("last_seen", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        ], [("ix_workers_last_seen", ["last_seen"])]),
        ("outbox", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("series_uid", sa.String(length=64), nullable=False),
            sa.Column("series_version", sa.Integer(), nullable=False),
            sa.Column("kind", sa.String(length=8), nullable=False),
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("destination", sa.String(length=64), nullable=False),
            sa.Column("state", sa.String(length=8), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("sent_at", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("sop_instance_uid", "destination"),
        ], [("ix_outbox_state", ["state"]), ("ix_outbox_study_uid", ["study_uid"])]),
        ("qa_messages", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("study_id", sa.Integer(), nullable=False),
            sa.Column("role", sa.String(length=8), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("question_id", sa.Integer(), nullable=True),
            sa.Column("state", sa.String(length=12), nullable=False),
            sa.Column("hemodynamic_status", sa.String(length=8), nullable=True),
            sa.Column("answerer", sa.String(length=64), nullable=True),
            sa.Column("job_id", sa.Integer(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["question_id"], ["qa_messages.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
        ], [("ix_qa_messages_created_at", ["created_at"]),
            ("ix_qa_messages_question_id", ["question_id"]),
            ("ix_qa_messages_study_id", ["study_id"])]),
    ]


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    for name, columns, indexes in _tables():
        if name in have:
            continue
        op.create_table(name, *columns)
        for index_name, index_columns in indexes:
            op.create_index(index_name, name, index_columns, unique=False)


def downgrade() -> None:
    for name, _columns, _indexes in reversed(_tables()):
        op.drop_table(name)
