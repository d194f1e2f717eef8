"""pinned inputs: the checksum each pinned input's dataset must have when the job is admitted;
workflows' state changes as events of the feed (``workflow_events``, in the same id space)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A workflow's state (the rule of ``services.gateway.workflows.service.workflow_state``),
# recomputed when one of its steps changes state (or joins it: the creation sets the steps'
# ``workflow_id`` once their rows are written), at the commit of that change (a deferred
# constraint trigger: the transaction holds every row lock it will take, so waiting for the
# workflow's advisory lock closes no cycle, and it sees the steps as the transactions before
# it committed them). A new state is a ``workflow_events`` row; the latest is the stored one
# (PENDING before the first).
_WORKFLOW_STATE = """
CREATE FUNCTION stratus_workflow_state() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    w_tenant uuid;
    w_cancelled boolean;
    now_state text;
    last_state text;
BEGIN
    PERFORM pg_advisory_xact_lock(24, hashtext(NEW.workflow_id::text));
    SELECT tenant_id, cancelled INTO w_tenant, w_cancelled FROM workflows
    WHERE id = NEW.workflow_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT CASE
        WHEN bool_and(state = 'PENDING') THEN 'PENDING'
        WHEN bool_or(state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT'))
            THEN 'RUNNING'
        WHEN bool_and(state = 'SUCCEEDED') THEN 'SUCCEEDED'
        WHEN w_cancelled THEN 'CANCELLED'
        ELSE 'FAILED'
    END INTO now_state
    FROM jobs WHERE workflow_id = NEW.workflow_id;
    SELECT state INTO last_state FROM workflow_events
    WHERE workflow_id = NEW.workflow_id ORDER BY id DESC LIMIT 1;
    IF now_state IS NOT NULL AND now_state IS DISTINCT FROM coalesce(last_state, 'PENDING') THEN
        INSERT INTO workflow_events (tenant_id, workflow_id, state)
        VALUES (w_tenant, NEW.workflow_id, now_state);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    # ``{input name: checksum}`` for the pinned inputs (``inputs`` keeps their names), NULL
    # when none is pinned: checked at submit and when the scheduler admits the job.
    op.add_column("jobs", sa.Column("pins", postgresql.JSONB(), nullable=True))
    op.create_table(
        "workflow_events",
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('job_events_id_seq')"),
            nullable=False,
        ),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name="fk_workflow_events_workflow_id_workflows",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_events"),
    )
    op.create_index("ix_workflow_events_tenant_id_id", "workflow_events", ["tenant_id", "id"])
    op.create_index("ix_workflow_events_workflow_id_id", "workflow_events", ["workflow_id", "id"])
    # the feed's triggers (migration 0018): the xid before the id, one NOTIFY per statement
    op.execute(
        "CREATE TRIGGER workflow_events_xid_first BEFORE INSERT ON workflow_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_events_xid_first()"
    )
    op.execute(
        "CREATE TRIGGER workflow_events_notify AFTER INSERT ON workflow_events"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_events_notify()"
    )
    op.execute(_WORKFLOW_STATE)
    op.execute(
        "CREATE CONSTRAINT TRIGGER jobs_workflow_state_update"
        " AFTER UPDATE OF state, workflow_id ON jobs"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        " WHEN (NEW.workflow_id IS NOT NULL AND (OLD.state IS DISTINCT FROM NEW.state"
        " OR OLD.workflow_id IS DISTINCT FROM NEW.workflow_id))"
        " EXECUTE FUNCTION stratus_workflow_state()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER jobs_workflow_state_insert AFTER INSERT ON jobs"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        " WHEN (NEW.workflow_id IS NOT NULL AND NEW.state <> 'PENDING')"
        " EXECUTE FUNCTION stratus_workflow_state()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_workflow_state_insert ON jobs")
    op.execute("DROP TRIGGER jobs_workflow_state_update ON jobs")
    op.execute("DROP FUNCTION stratus_workflow_state()")
    op.execute("DROP TRIGGER workflow_events_notify ON workflow_events")
    op.execute("DROP TRIGGER workflow_events_xid_first ON workflow_events")
    op.drop_index("ix_workflow_events_workflow_id_id", table_name="workflow_events")
    op.drop_index("ix_workflow_events_tenant_id_id", table_name="workflow_events")
    op.drop_table("workflow_events")
    op.drop_column("jobs", "pins")
