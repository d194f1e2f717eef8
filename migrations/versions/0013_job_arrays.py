"""job arrays: ``job_arrays`` (settings and counts by state), element columns on ``jobs``,
and the trigger that keeps the counts and the array's state

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 13:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# ``stratus_array_refresh(ids)``: the state (and start, finish) of the arrays ``ids`` from
# their counts. PENDING while every element is pending; RUNNING while any is not final;
# then SUCCEEDED when all succeeded, CANCELLED when the array was cancelled, else FAILED.
REFRESH = """
CREATE FUNCTION stratus_array_refresh(ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE jobs j SET
        state = d.state,
        started_at = CASE WHEN d.state <> 'PENDING' THEN coalesce(j.started_at, now())
                     END,
        finished_at = CASE WHEN d.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
                      THEN coalesce(j.finished_at, now()) END,
        updated_at = now()
    FROM (
        SELECT job_id,
               CASE WHEN n_pending = size THEN 'PENDING'
                    WHEN n_pending + n_queued + n_running > 0 THEN 'RUNNING'
                    WHEN n_succeeded = size THEN 'SUCCEEDED'
                    WHEN cancelled THEN 'CANCELLED'
                    ELSE 'FAILED' END AS state
        FROM job_arrays WHERE job_id = ANY(ids)
    ) d
    WHERE j.id = d.job_id AND j.state IS DISTINCT FROM d.state
$$
"""

# One function for both triggers (a trigger with transition tables has one event): the
# statement's state changes of elements, added to their arrays' counts, arrays locked in id
# order (two statements never wait on each other's arrays crosswise). An inserted element
# leaves ``n_pending`` (it was pending before it had a row) for its state's count. An
# element's ``array_id`` never changes.
_SUMS = """
        coalesce(sum(k) FILTER (WHERE s = 'PENDING'), 0) AS pending,
        coalesce(sum(k) FILTER (WHERE s = 'QUEUED'), 0) AS queued,
        coalesce(sum(k) FILTER (WHERE s = 'RUNNING'), 0) AS running,
        coalesce(sum(k) FILTER (WHERE s = 'SUCCEEDED'), 0) AS succeeded,
        coalesce(sum(k) FILTER (WHERE s = 'FAILED'), 0) AS failed,
        coalesce(sum(k) FILTER (WHERE s = 'CANCELLED'), 0) AS cancelled,
        coalesce(sum(k) FILTER (WHERE s = 'TIMED_OUT'), 0) AS timed_out
"""
_ADD = """
    UPDATE job_arrays a SET
        n_pending = n_pending + d.pending, n_queued = n_queued + d.queued,
        n_running = n_running + d.running, n_succeeded = n_succeeded + d.succeeded,
        n_failed = n_failed + d.failed, n_cancelled = n_cancelled + d.cancelled,
        n_timed_out = n_timed_out + d.timed_out
"""
COUNTS = f"""
CREATE FUNCTION stratus_array_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    touched uuid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT array_id ORDER BY array_id) INTO touched
        FROM new_rows WHERE array_id IS NOT NULL;
        IF touched IS NULL THEN
            RETURN NULL;
        END IF;
        PERFORM 1 FROM job_arrays WHERE job_id = ANY(touched) ORDER BY job_id FOR UPDATE;
        {_ADD}
        FROM (
            SELECT array_id, {_SUMS}
            FROM (SELECT array_id, state AS s, 1 AS k FROM new_rows
                  WHERE array_id IS NOT NULL
                  UNION ALL
                  SELECT array_id, 'PENDING', -1 FROM new_rows
                  WHERE array_id IS NOT NULL) c
            GROUP BY array_id
        ) d
        WHERE a.job_id = d.array_id;
    ELSE
        SELECT array_agg(DISTINCT n.array_id ORDER BY n.array_id) INTO touched
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.array_id IS NOT NULL AND n.state IS DISTINCT FROM o.state;
        IF touched IS NULL THEN
            RETURN NULL;
        END IF;
        PERFORM 1 FROM job_arrays WHERE job_id = ANY(touched) ORDER BY job_id FOR UPDATE;
        {_ADD}
        FROM (
            SELECT array_id, {_SUMS}
            FROM (SELECT n.array_id, n.state AS s, 1 AS k
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                  WHERE n.array_id IS NOT NULL AND n.state IS DISTINCT FROM o.state
                  UNION ALL
                  SELECT n.array_id, o.state, -1
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                  WHERE n.array_id IS NOT NULL AND n.state IS DISTINCT FROM o.state) c
            GROUP BY array_id
        ) d
        WHERE a.job_id = d.array_id;
    END IF;
    PERFORM stratus_array_refresh(touched);
    RETURN NULL;
END
$$
"""  # noqa: S608 (built from constants only)


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("is_array", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("jobs", sa.Column("array_id", UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("array_index", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "fk_jobs_array_id_jobs", "jobs", "jobs", ["array_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index(
        "ix_jobs_array_element",
        "jobs",
        ["array_id", "array_index"],
        unique=True,
        postgresql_where=sa.text("array_id IS NOT NULL"),
    )
    op.create_table(
        "job_arrays",
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("index_param", sa.String(100), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("overrides", JSONB(), nullable=True),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("n_pending", sa.Integer(), nullable=False),
        sa.Column("n_queued", sa.Integer(), nullable=False),
        sa.Column("n_running", sa.Integer(), nullable=False),
        sa.Column("n_succeeded", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("n_cancelled", sa.Integer(), nullable=False),
        sa.Column("n_timed_out", sa.Integer(), nullable=False),
        sa.CheckConstraint("size >= 1", name="ck_job_arrays_size_positive"),
        sa.CheckConstraint(
            "max_concurrent IS NULL OR max_concurrent >= 1", name="ck_job_arrays_max_positive"
        ),
        sa.CheckConstraint(
            "n_pending >= 0 AND n_queued >= 0 AND n_running >= 0 AND n_succeeded >= 0"
            " AND n_failed >= 0 AND n_cancelled >= 0 AND n_timed_out >= 0",
            name="ck_job_arrays_counts_natural",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_arrays_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_job_arrays_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_arrays"),
    )
    op.create_index(
        "ix_job_arrays_open",
        "job_arrays",
        ["tenant_id"],
        postgresql_where=sa.text("NOT cancelled AND next_index < size"),
    )
    op.execute(REFRESH)
    op.execute(COUNTS)
    op.execute(
        "CREATE TRIGGER stratus_array_counts_insert AFTER INSERT ON jobs"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_array_counts()"
    )
    op.execute(
        "CREATE TRIGGER stratus_array_counts_update AFTER UPDATE ON jobs"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_array_counts()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER stratus_array_counts_update ON jobs")
    op.execute("DROP TRIGGER stratus_array_counts_insert ON jobs")
    op.execute("DROP FUNCTION stratus_array_counts()")
    op.execute("DROP FUNCTION stratus_array_refresh(uuid[])")
    op.drop_index("ix_job_arrays_open", table_name="job_arrays")
    op.drop_table("job_arrays")
    op.drop_index("ix_jobs_array_element", table_name="jobs")
    op.drop_constraint("fk_jobs_array_id_jobs", "jobs", type_="foreignkey")
    op.drop_column("jobs", "array_index")
    op.drop_column("jobs", "array_id")
    op.drop_column("jobs", "is_array")
