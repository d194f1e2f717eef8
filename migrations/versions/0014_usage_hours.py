"""usage_hours: each tenant's attempts summed by the hour in which they ended, kept by a
statement-level trigger on ``job_attempts``, so fair share and ``cpu_seconds_per_day`` read
at most a day of hourly rows per tenant instead of a day of attempts

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The hour (UTC) of an attempt that ended at ``finished_at``, and the attempt's CPU seconds
# times its seconds into that hour (``cpu_moment_s``: with ``cpu_seconds``, where in the hour
# the bucket's CPU time lies, for the decay). ``k`` is +1 for a row added, -1 for one removed.
_ROWS = """
    SELECT tenant_id, hour, k AS n, k * cpu_seconds AS cpu, k * gpu_seconds AS gpu,
           k * cpu_seconds * extract(epoch FROM finished_at - hour)::float8 AS moment
    FROM (SELECT tenant_id, cpu_seconds, gpu_seconds, finished_at,
                 date_trunc('hour', finished_at, 'UTC') AS hour, {k} AS k
          FROM {table}) r
"""


def _add(source: str, *, live: str = "true") -> str:
    """Add the rows of ``source`` that satisfy ``live`` to their buckets, one statement:
    buckets locked in (tenant_id, hour) order, so two statements never wait on each other's
    buckets crosswise."""
    return f"""
        INSERT INTO usage_hours AS b
            (tenant_id, hour, attempts, cpu_seconds, gpu_seconds, cpu_moment_s)
        SELECT tenant_id, hour, sum(n), sum(cpu), sum(gpu), sum(moment)
        FROM ({source}) d
        WHERE {live}
        GROUP BY tenant_id, hour
        HAVING sum(n) <> 0 OR sum(cpu) <> 0 OR sum(gpu) <> 0 OR sum(moment) <> 0
        ORDER BY tenant_id, hour
        ON CONFLICT (tenant_id, hour) DO UPDATE SET
            attempts = b.attempts + excluded.attempts,
            cpu_seconds = b.cpu_seconds + excluded.cpu_seconds,
            gpu_seconds = b.gpu_seconds + excluded.gpu_seconds,
            cpu_moment_s = b.cpu_moment_s + excluded.cpu_moment_s;
    """  # noqa: S608 (built from constants only)


_NEW = _ROWS.format(k=1, table="new_rows")
_OLD = _ROWS.format(k=-1, table="old_rows")
# Attempts deleted with their tenant (the deletion cascades to its jobs and their attempts)
# leave no bucket behind: the tenant's buckets go with it. Inserted attempts need no such
# check (their jobs' tenants exist), which keeps the tenants table out of the record path.
_LIVE = "EXISTS (SELECT 1 FROM tenants WHERE tenants.id = d.tenant_id)"

# One function for the three triggers (a trigger with transition tables has one event).
# Attempts are only ever inserted by the services; an update or a delete (a job's deletion
# cascades to its attempts) moves its rows' usage too, so the buckets always sum up
# ``job_attempts`` exactly.
SUMS = f"""
CREATE FUNCTION stratus_usage_hours() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_add(_NEW)}
    ELSIF TG_OP = 'DELETE' THEN
        {_add(_OLD, live=_LIVE)}
    ELSE
        {_add(_NEW + " UNION ALL " + _OLD, live=_LIVE)}
    END IF;
    RETURN NULL;
END
$$
"""

BACKFILL = f"""
INSERT INTO usage_hours (tenant_id, hour, attempts, cpu_seconds, gpu_seconds, cpu_moment_s)
SELECT tenant_id, hour, sum(n), sum(cpu), sum(gpu), sum(moment)
FROM ({_ROWS.format(k=1, table="job_attempts")}) d
WHERE tenant_id IN (SELECT id FROM tenants)
GROUP BY tenant_id, hour
"""  # noqa: S608 (built from constants only)


def upgrade() -> None:
    op.create_table(
        "usage_hours",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("cpu_moment_s", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_usage_hours_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "hour", name="pk_usage_hours"),
    )
    op.execute(SUMS)
    # The triggers first: creating one locks job_attempts against writes until this
    # transaction commits, so the backfill below sees every attempt and no attempt is
    # counted by both.
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER stratus_usage_hours_{event.lower()} AFTER {event} ON job_attempts"
            f" REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION stratus_usage_hours()"
        )
    op.execute(BACKFILL)


def downgrade() -> None:
    for event in ("delete", "update", "insert"):
        op.execute(f"DROP TRIGGER stratus_usage_hours_{event} ON job_attempts")
    op.execute("DROP FUNCTION stratus_usage_hours()")
    op.drop_table("usage_hours")
