"""the events feed: job_events carry their tenant and kind, migrations get their events in the
same id space, an array's own changes are events, and every commit with events notifies

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "stratus_events"  # services/gateway/events/hub.py listens on it

# The feed's readers (services/gateway/events/hub.py) hand out an id only once every
# transaction that could still commit a lower one has ended, which they learn from
# snapshots: that needs every inserting transaction to have its xid before it draws an id.
# A statement-level BEFORE trigger runs before the statement draws any, and assigns it.
_XID_FIRST = """
CREATE FUNCTION stratus_events_xid_first() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN NULL;
END
$$
"""

# One NOTIFY per statement that inserted events; PostgreSQL folds the identical ones of a
# transaction into one, delivered at commit.
_NOTIFY = f"""
CREATE FUNCTION stratus_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('{CHANNEL}', 'events');
    END IF;
    RETURN NULL;
END
$$
"""  # noqa: S608 (a constant channel name)

# An inserter that does not name the tenant (a row written by code that predates the column)
# gets the job's; the WHEN clause keeps the trigger off every insert that names it.
_TENANT = """
CREATE FUNCTION stratus_job_events_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT tenant_id INTO NEW.tenant_id FROM jobs WHERE id = NEW.job_id;
    RETURN NEW;
END
$$
"""

_MIGRATION_EVENT = """
CREATE FUNCTION stratus_migration_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO migration_events (tenant_id, migration_id, state)
    VALUES (NEW.tenant_id, NEW.id, NEW.state);
    RETURN NULL;
END
$$
"""

# As 0017's, with a ``job_events`` row for each array whose state it changes (attempt 0).
_REFRESH = """
CREATE OR REPLACE FUNCTION stratus_array_refresh(ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    WITH d AS (
        SELECT a.job_id, j.state AS old_state,
               CASE WHEN n_pending = size THEN 'PENDING'
                    WHEN n_pending + n_queued + n_running > 0 THEN 'RUNNING'
                    WHEN n_succeeded = size THEN 'SUCCEEDED'
                    WHEN cancelled THEN 'CANCELLED'
                    ELSE 'FAILED' END AS state
        FROM job_arrays a JOIN jobs j ON j.id = a.job_id
        WHERE a.job_id = ANY(ids)
    ), changed AS (
        UPDATE jobs j SET
            state = d.state,
            started_at = CASE WHEN d.state = 'RUNNING' THEN coalesce(j.started_at, now())
                              ELSE j.started_at END,
            finished_at = CASE WHEN d.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
                          THEN coalesce(j.finished_at, now()) END,
            updated_at = now()
        FROM d
        WHERE j.id = d.job_id AND j.state IS DISTINCT FROM d.state
        RETURNING j.id, j.tenant_id, d.old_state, d.state
    )
    INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, at)
    SELECT id, tenant_id, 0, old_state, state, now() FROM changed
$$
"""

_PREVIOUS_REFRESH = """
CREATE OR REPLACE FUNCTION stratus_array_refresh(ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE jobs j SET
        state = d.state,
        started_at = CASE WHEN d.state = 'RUNNING' THEN coalesce(j.started_at, now())
                          ELSE j.started_at END,
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


def _feed_triggers(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_xid_first BEFORE INSERT ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_events_xid_first()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_notify AFTER INSERT ON {table}"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_events_notify()"
    )


def upgrade() -> None:
    op.add_column("job_events", sa.Column("tenant_id", UUID(as_uuid=True), nullable=True))
    op.execute("UPDATE job_events e SET tenant_id = j.tenant_id FROM jobs j WHERE j.id = e.job_id")
    op.alter_column("job_events", "tenant_id", nullable=False)
    op.add_column(
        "job_events",
        sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'state'")),
    )
    op.add_column("job_events", sa.Column("progress", sa.REAL(), nullable=True))
    op.create_index("ix_job_events_tenant_id_id", "job_events", ["tenant_id", "id"])
    op.create_table(
        "migration_events",
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('job_events_id_seq')"),
            nullable=False,
        ),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("migration_id", UUID(as_uuid=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["migration_id"],
            ["migrations.id"],
            name="fk_migration_events_migration_id_migrations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_migration_events"),
    )
    op.create_index("ix_migration_events_tenant_id_id", "migration_events", ["tenant_id", "id"])
    op.execute(_XID_FIRST)
    op.execute(_NOTIFY)
    op.execute(_TENANT)
    op.execute(_MIGRATION_EVENT)
    _feed_triggers("job_events")
    _feed_triggers("migration_events")
    op.execute(
        "CREATE TRIGGER job_events_tenant BEFORE INSERT ON job_events FOR EACH ROW"
        " WHEN (NEW.tenant_id IS NULL) EXECUTE FUNCTION stratus_job_events_tenant()"
    )
    op.execute(
        "CREATE TRIGGER migrations_event_insert AFTER INSERT ON migrations FOR EACH ROW"
        " EXECUTE FUNCTION stratus_migration_event()"
    )
    op.execute(
        "CREATE TRIGGER migrations_event_update AFTER UPDATE OF state ON migrations FOR EACH ROW"
        " WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION stratus_migration_event()"
    )
    op.execute(_REFRESH)


def downgrade() -> None:
    op.execute(_PREVIOUS_REFRESH)
    op.execute("DROP TRIGGER migrations_event_update ON migrations")
    op.execute("DROP TRIGGER migrations_event_insert ON migrations")
    op.execute("DROP TRIGGER job_events_tenant ON job_events")
    for table in ("job_events", "migration_events"):
        op.execute(f"DROP TRIGGER {table}_notify ON {table}")
        op.execute(f"DROP TRIGGER {table}_xid_first ON {table}")
    op.drop_index("ix_migration_events_tenant_id_id", table_name="migration_events")
    op.drop_table("migration_events")
    for fn in (
        "stratus_migration_event",
        "stratus_job_events_tenant",
        "stratus_events_notify",
        "stratus_events_xid_first",
    ):
        op.execute(f"DROP FUNCTION {fn}()")
    op.drop_index("ix_job_events_tenant_id_id", table_name="job_events")
    op.drop_column("job_events", "progress")
    op.drop_column("job_events", "kind")
    op.drop_column("job_events", "tenant_id")
