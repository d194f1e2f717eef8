"""a tenant's waiting jobs count each element of its arrays once (jobs_waiting, read from two
partial indexes), and the room in its queue (jobs_waiting_room) is taken from that count

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 13:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How many jobs ``tenant`` has waiting (PENDING or QUEUED), each element of an array one job:
# the rows that wait outside arrays (at most ``cap`` of them; NULL: all), plus the pending and
# queued counts of the tenant's arrays that are not final. An element with a row is in its
# array's counts (the trigger of 0013 keeps them), so it is counted there and not as a row;
# an array's own row is never a waiting job.
WAITING = """
CREATE FUNCTION jobs_waiting(tenant uuid, cap integer) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM (
                SELECT 1 FROM jobs
                WHERE tenant_id = tenant AND state IN ('PENDING', 'QUEUED')
                  AND NOT is_array AND array_id IS NULL
                LIMIT cap) AS rows)
         + (SELECT coalesce(sum(a.n_pending + a.n_queued), 0)
            FROM jobs j JOIN job_arrays a ON a.job_id = j.id
            WHERE j.tenant_id = tenant AND j.is_array AND j.state IN ('PENDING', 'RUNNING'));
END
$$
"""

# Each part of the count reads one partial index whose condition is exactly its own: a
# condition the index cannot answer would send every counted row to the table, and the
# planner, taking a tenant's rows and the waiting rows as independent, may then prefer a
# scan of the whole table for a small quota (a LIMIT it expects to reach early).
WAITING_WHERE = "state IN ('PENDING', 'QUEUED') AND NOT is_array AND array_id IS NULL"
OPEN_ARRAYS_WHERE = "is_array AND state IN ('PENDING', 'RUNNING')"

# As in 0011 (the lock, then the count in a statement of its own), counting with
# ``jobs_waiting``.
WAITING_ROOM = """
CREATE OR REPLACE FUNCTION jobs_waiting_room(tenant uuid, quota integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1364284535, hashtext(tenant::text));
    RETURN greatest(quota - jobs_waiting(tenant, greatest(quota, 0)), -1);
END
$$
"""

# 0011's function, restored on the way down.
WAITING_ROOM_0011 = """
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
    op.create_index(
        "ix_jobs_tenant_waiting", "jobs", ["tenant_id"], postgresql_where=sa.text(WAITING_WHERE)
    )
    op.create_index(
        "ix_jobs_tenant_open_arrays",
        "jobs",
        ["tenant_id"],
        postgresql_where=sa.text(OPEN_ARRAYS_WHERE),
    )
    op.execute(WAITING)
    op.execute(WAITING_ROOM)


def downgrade() -> None:
    op.execute(WAITING_ROOM_0011)
    op.execute("DROP FUNCTION jobs_waiting(uuid, integer)")
    op.drop_index("ix_jobs_tenant_open_arrays", table_name="jobs")
    op.drop_index("ix_jobs_tenant_waiting", table_name="jobs")
