"""tenancy: usage records, audit log, fair-share indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 16:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_records_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_usage_records")),
    )
    op.create_index(
        "ix_usage_records_tenant_recorded", "usage_records", ["tenant_id", "recorded_at"]
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=True),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_tenant_at", "audit_log", ["tenant_id", "at"])
    # Fair share reads recent attempts per tenant, and each tenant's best waiting jobs.
    op.create_index(
        "ix_job_attempts_tenant_finished", "job_attempts", ["tenant_id", "finished_at"]
    )
    op.create_index(
        "ix_jobs_tenant_dispatchable", "jobs",
        ["tenant_id", sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=sa.text("state = 'QUEUED' AND dispatched_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_dispatchable", table_name="jobs")
    op.drop_index("ix_job_attempts_tenant_finished", table_name="job_attempts")
    op.drop_index("ix_audit_log_tenant_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_usage_records_tenant_recorded", table_name="usage_records")
    op.drop_table("usage_records")
