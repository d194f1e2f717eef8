"""jobs that wait on dependencies have a bound of their own: max_queued_jobs counts the jobs
that are ready (``jobs_waiting``: deps_left = 0), and ``jobs_held`` / ``jobs_held_room``
count those that wait on dependencies (deps_left > 0), each element of an array once

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As 0015's ``jobs_waiting``, but only the jobs and arrays whose dependencies are all settled:
# each part still reads one partial index whose condition is exactly its own.
READY_WHERE = (
    "state IN ('PENDING', 'QUEUED') AND NOT is_array AND array_id IS NULL AND deps_left = 0"
)
READY_ARRAYS_WHERE = "is_array AND state IN ('PENDING', 'RUNNING') AND deps_left = 0"
# 0015's conditions, restored on the way down.
WAITING_WHERE = "state IN ('PENDING', 'QUEUED') AND NOT is_array AND array_id IS NULL"
OPEN_ARRAYS_WHERE = "is_array AND state IN ('PENDING', 'RUNNING')"
# The jobs and arrays that wait on dependencies (few: an index of their own).
HELD_WHERE = "deps_left > 0 AND state IN ('PENDING', 'RUNNING') AND array_id IS NULL"

WAITING = f"""
CREATE OR REPLACE FUNCTION jobs_waiting(tenant uuid, cap integer) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM (
                SELECT 1 FROM jobs
                WHERE tenant_id = tenant AND {READY_WHERE}
                LIMIT cap) AS rows)
         + (SELECT coalesce(sum(a.n_pending + a.n_queued), 0)
            FROM jobs j JOIN job_arrays a ON a.job_id = j.id
            WHERE j.tenant_id = tenant AND j.is_array AND j.state IN ('PENDING', 'RUNNING')
              AND j.deps_left = 0);
END
$$
"""  # noqa: S608 (constants only)

WAITING_0015 = f"""
CREATE OR REPLACE FUNCTION jobs_waiting(tenant uuid, cap integer) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM (
                SELECT 1 FROM jobs
                WHERE tenant_id = tenant AND {WAITING_WHERE}
                LIMIT cap) AS rows)
         + (SELECT coalesce(sum(a.n_pending + a.n_queued), 0)
            FROM jobs j JOIN job_arrays a ON a.job_id = j.id
            WHERE j.tenant_id = tenant AND j.is_array AND j.state IN ('PENDING', 'RUNNING'));
END
$$
"""  # noqa: S608 (constants only)

# A job that waits (PENDING, "dependency") counts once; an array that waits (an ``aftercorr``
# array until its counterpart has ended, whose elements may have started) counts each
# element that has not ended.
HELD = f"""
CREATE FUNCTION jobs_held(tenant uuid) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM jobs
            WHERE tenant_id = tenant AND {HELD_WHERE} AND NOT is_array)
         + (SELECT coalesce(sum(a.n_pending + a.n_queued + a.n_running), 0)
            FROM jobs j JOIN job_arrays a ON a.job_id = j.id
            WHERE j.tenant_id = tenant AND j.deps_left > 0
              AND j.state IN ('PENDING', 'RUNNING') AND j.array_id IS NULL AND j.is_array);
END
$$
"""  # noqa: S608 (constants only)

# Under the tenant's submission lock (the one ``jobs_waiting_room`` takes): what is left of
# ``quota`` for jobs that wait on dependencies, the rows of the caller's transaction counted.
HELD_ROOM = """
CREATE FUNCTION jobs_held_room(tenant uuid, quota integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1364284535, hashtext(tenant::text));
    RETURN quota - jobs_held(tenant);
END
$$
"""


def upgrade() -> None:
    op.drop_index("ix_jobs_tenant_waiting", table_name="jobs")
    op.drop_index("ix_jobs_tenant_open_arrays", table_name="jobs")
    op.create_index(
        "ix_jobs_tenant_waiting", "jobs", ["tenant_id"], postgresql_where=sa.text(READY_WHERE)
    )
    op.create_index(
        "ix_jobs_tenant_open_arrays",
        "jobs",
        ["tenant_id"],
        postgresql_where=sa.text(READY_ARRAYS_WHERE),
    )
    op.create_index(
        "ix_jobs_tenant_held", "jobs", ["tenant_id"], postgresql_where=sa.text(HELD_WHERE)
    )
    op.execute(WAITING)
    op.execute(HELD)
    op.execute(HELD_ROOM)


def downgrade() -> None:
    op.execute("DROP FUNCTION jobs_held_room(uuid, integer)")
    op.execute("DROP FUNCTION jobs_held(uuid)")
    op.execute(WAITING_0015)
    op.drop_index("ix_jobs_tenant_held", table_name="jobs")
    op.drop_index("ix_jobs_tenant_open_arrays", table_name="jobs")
    op.drop_index("ix_jobs_tenant_waiting", table_name="jobs")
    op.create_index(
        "ix_jobs_tenant_waiting", "jobs", ["tenant_id"], postgresql_where=sa.text(WAITING_WHERE)
    )
    op.create_index(
        "ix_jobs_tenant_open_arrays",
        "jobs",
        ["tenant_id"],
        postgresql_where=sa.text(OPEN_ARRAYS_WHERE),
    )
