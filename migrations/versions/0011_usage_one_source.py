"""usage has one source, job_attempts (usage_records retired); submissions of one tenant
reserve their place in its queue atomically (jobs_waiting_room)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 07:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How many more jobs ``tenant`` may have waiting (PENDING or QUEUED) under ``quota``, with the
# tenant's submission lock held until the end of the calling transaction. The count is a
# statement of its own after the lock is granted (a volatile function takes a new snapshot
# for each statement), so it sees every job that the batch holding the lock before committed:
# two batches of one tenant never both see the same free room. The first key of the lock is a
# constant of this function, so other advisory locks cannot collide with it.
WAITING_ROOM = """
CREATE OR REPLACE FUNCTION jobs_waiting_room(tenant uuid, quota integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1364284535, hashtext(tenant::text));
    RETURN quota - (
        SELECT count(*) FROM (
            SELECT 1 FROM jobs
            WHERE tenant_id = tenant AND state IN ('PENDING', 'QUEUED')
            LIMIT greatest(quota, 0)
        ) AS waiting
    );
END
$$
"""


def upgrade() -> None:
    op.execute(WAITING_ROOM)
    op.drop_index("ix_usage_records_tenant_recorded", table_name="usage_records")
    op.drop_table("usage_records")


def downgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_records_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_usage_records")),
    )
    op.create_index(
        "ix_usage_records_tenant_recorded", "usage_records", ["tenant_id", "recorded_at"]
    )
    op.execute(
        "INSERT INTO usage_records (job_id, attempt, tenant_id, cpu_seconds, gpu_seconds, "
        "recorded_at) SELECT job_id, attempt, tenant_id, cpu_seconds, gpu_seconds, finished_at "
        "FROM job_attempts WHERE tenant_id IN (SELECT id FROM tenants)"
    )
    op.execute("DROP FUNCTION IF EXISTS jobs_waiting_room(uuid, integer)")
