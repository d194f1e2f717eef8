"""the jobs in flight have an index of their own: the dispatch pass counts a tenant's and a
device's jobs in flight (``shared.jobs.usage.IN_FLIGHT``) on every pass, and with no index
whose condition is exactly that one, the count read every QUEUED row through
``ix_jobs_active``, the waiting backlog included (1,779 rows filtered out to count 8, in a
run of 6,000 jobs from 16 clients)

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-07 06:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# shared.jobs.usage.IN_FLIGHT, as it stands in the queries
IN_FLIGHT = (
    "(NOT is_array AND (state = 'RUNNING' OR (state = 'QUEUED' AND dispatched_at IS NOT NULL)))"
)


def upgrade() -> None:
    op.create_index(
        "ix_jobs_in_flight",
        "jobs",
        ["tenant_id", "assigned_device"],
        postgresql_where=sa.text(IN_FLIGHT),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_in_flight", table_name="jobs")
