"""chunk_attempts: the usage of a chunk's elements in one row per flush, instead of one
``job_attempts`` row per element; ``attempt_records``, the view of every attempt (a
``job_attempts`` row, or an element's entry in a ``chunk_attempts`` row); ``usage_hours``
kept from both; ``job_events.counts``, an array's counts in the progress event of a flush

A chunk's flush (``shared.jobs.chunks``) inserts the rows of the elements it records and,
in the same statement, one ``chunk_attempts`` row for all of them: the attempt (the chunk's
claim, the same for every element of the flush), the worker, the device, the time the
flush ended (``finished_at``, as ``job_attempts``' default) and, index by index, each
element's outcome, CPU and wall seconds, start and error. An element's attempt is in
``chunk_attempts`` only if the flush inserted the element's row (a repeated flush inserts
none), so each (element, attempt) is recorded once, in one of the two tables; the attempts
that a chunk's element has later (a retry through the per-job path), the attempts lost with
a worker and those the array's cancel ended stay in ``job_attempts``.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-06 23:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The element's id, as shared.jobs.arrays.element_id_sql.
_ELEMENT_ID = "(left(replace(c.array_id::text, '-', ''), 20) || lpad(to_hex(u.i), 12, '0'))::uuid"

VIEW = f"""
CREATE VIEW attempt_records AS
SELECT job_id, attempt, tenant_id, worker, outcome, cpu_seconds, gpu_seconds, wall_seconds,
       finished_at, device, started_at, error
FROM job_attempts
UNION ALL
SELECT {_ELEMENT_ID}, c.attempt, c.tenant_id, c.worker, u.outcome, u.cpu, 0::float8, u.wall,
       c.finished_at, c.device, u.started, u.error
FROM chunk_attempts c
CROSS JOIN LATERAL unnest(c.indices, c.outcomes, c.cpu_seconds, c.wall_seconds, c.started_at,
                          c.errors) AS u(i, outcome, cpu, wall, started, error)
"""  # noqa: S608 (built from constants only)

# A chunk_attempts row as the usage_hours buckets take it (migration 0014's _ROWS): its
# elements' attempts, their CPU seconds, and those times the row's seconds into its hour.
_ROWS = """
    SELECT tenant_id, hour, k * cardinality(indices) AS n, k * cpu AS cpu, 0::float8 AS gpu,
           k * cpu * extract(epoch FROM finished_at - hour)::float8 AS moment
    FROM (SELECT tenant_id, indices, finished_at,
                 date_trunc('hour', finished_at, 'UTC') AS hour, {k} AS k,
                 (SELECT coalesce(sum(x), 0)::float8 FROM unnest(cpu_seconds) AS x) AS cpu
          FROM {table}) r
"""


def _add(source: str, *, live: str = "true") -> str:
    """As migration 0014's: the rows of ``source`` added to their buckets, one statement,
    buckets locked in (tenant_id, hour) order."""
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
_LIVE = "EXISTS (SELECT 1 FROM tenants WHERE tenants.id = d.tenant_id)"

SUMS = f"""
CREATE FUNCTION stratus_usage_hours_chunks() RETURNS trigger
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


def upgrade() -> None:
    op.create_table(
        "chunk_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("array_id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("device", sa.String(8)),
        sa.Column(
            "finished_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("last_index", sa.Integer(), nullable=False),
        sa.Column("indices", ARRAY(sa.Integer()), nullable=False),
        sa.Column("outcomes", ARRAY(sa.Text()), nullable=False),
        sa.Column("cpu_seconds", ARRAY(sa.Float()), nullable=False),
        sa.Column("wall_seconds", ARRAY(sa.Float()), nullable=False),
        sa.Column("started_at", ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column("errors", ARRAY(sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["array_id"], ["jobs.id"], name="fk_chunk_attempts_array_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chunk_attempts"),
        sa.CheckConstraint(
            "cardinality(outcomes) = cardinality(indices)"
            " AND cardinality(cpu_seconds) = cardinality(indices)"
            " AND cardinality(wall_seconds) = cardinality(indices)"
            " AND cardinality(started_at) = cardinality(indices)"
            " AND cardinality(errors) = cardinality(indices)",
            name="ck_chunk_attempts_same_lengths",
        ),
    )
    op.create_index("ix_chunk_attempts_array_index", "chunk_attempts", ["array_id", "first_index"])
    op.create_index(
        "ix_chunk_attempts_tenant_finished", "chunk_attempts", ["tenant_id", "finished_at"]
    )
    op.execute(SUMS)
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER stratus_usage_hours_chunks_{event.lower()} AFTER {event}"
            f" ON chunk_attempts REFERENCING {tables} FOR EACH STATEMENT"
            " EXECUTE FUNCTION stratus_usage_hours_chunks()"
        )
    op.execute(VIEW)
    # a chunk flush's progress event of its array carries the array's counts
    op.add_column("job_events", sa.Column("counts", JSONB()))


def downgrade() -> None:
    op.drop_column("job_events", "counts")
    # the elements' attempts go back to job_attempts, one row each (the buckets keep them)
    op.execute("DROP VIEW attempt_records")
    for event in ("delete", "update", "insert"):
        op.execute(f"DROP TRIGGER stratus_usage_hours_chunks_{event} ON chunk_attempts")
    # the buckets counted them already: the triggers stay out of it
    op.execute("ALTER TABLE job_attempts DISABLE TRIGGER USER")
    op.execute(
        f"""
        INSERT INTO job_attempts (job_id, attempt, tenant_id, worker, outcome, cpu_seconds,
                                  gpu_seconds, wall_seconds, finished_at, device, started_at,
                                  error)
        SELECT {_ELEMENT_ID}, c.attempt, c.tenant_id, c.worker, u.outcome, u.cpu, 0, u.wall,
               c.finished_at, c.device, u.started, u.error
        FROM chunk_attempts c
        CROSS JOIN LATERAL unnest(c.indices, c.outcomes, c.cpu_seconds, c.wall_seconds,
                                  c.started_at, c.errors) AS u(i, outcome, cpu, wall, started,
                                                              error)
        WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = {_ELEMENT_ID})
        ON CONFLICT DO NOTHING
        """  # noqa: S608 (built from constants only)
    )
    op.execute("ALTER TABLE job_attempts ENABLE TRIGGER USER")
    op.execute("DROP FUNCTION stratus_usage_hours_chunks()")
    op.drop_table("chunk_attempts")
