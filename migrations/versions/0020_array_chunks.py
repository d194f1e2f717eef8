"""array chunks: elements dispatched, claimed and recorded many at a time

``array_chunks``: one row per chunk of an array's elements (a contiguous index range) that
travels as one message, is claimed under one lease and is recorded set-based
(``shared.jobs.chunks``); ``job_arrays.element_wall_s``: the measured wall time of one
element (an EWMA of the chunks' flushes), from which the next chunks are sized.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_arrays", sa.Column("element_wall_s", sa.Float(), nullable=True))
    op.create_table(
        "array_chunks",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("array_id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("device", sa.String(8), nullable=True),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("n >= 1", name="ck_array_chunks_n_positive"),
        sa.ForeignKeyConstraint(
            ["array_id"], ["jobs.id"], name="fk_array_chunks_array_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_array_chunks_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_array_chunks"),
    )
    op.create_index(
        "ix_array_chunks_array_id_first_index",
        "array_chunks",
        ["array_id", "first_index"],
        unique=True,
    )
    op.create_index(
        "ix_array_chunks_tenant_id",
        "array_chunks",
        ["tenant_id"],
        postgresql_where=sa.text("dispatched_at IS NULL AND worker IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_array_chunks_tenant_id", table_name="array_chunks")
    op.drop_index("ix_array_chunks_array_id_first_index", table_name="array_chunks")
    op.drop_table("array_chunks")
    op.drop_column("job_arrays", "element_wall_s")
