"""job progress and job logs

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # how far the running attempt is (0.0-1.0), written by the worker every 2 s
    op.add_column("jobs", sa.Column("progress", sa.Float()))
    # what GET /v1/jobs/{id}/attempts shows of an attempt that ended
    op.add_column("job_attempts", sa.Column("device", sa.String(8)))
    op.add_column("job_attempts", sa.Column("started_at", sa.DateTime(timezone=True)))
    op.add_column("job_attempts", sa.Column("error", sa.Text()))
    # the lines the worker writes besides the transitions (staging, progress), batched
    op.create_table(
        "job_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_log_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_log")),
    )
    op.create_index("ix_job_log_job_at", "job_log", ["job_id", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_log_job_at", table_name="job_log")
    op.drop_table("job_log")
    op.drop_column("job_attempts", "error")
    op.drop_column("job_attempts", "started_at")
    op.drop_column("job_attempts", "device")
    op.drop_column("jobs", "progress")
