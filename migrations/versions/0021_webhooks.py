"""webhooks: a tenant's signing secret, the jobs' notify and the deliveries

A row-level trigger writes a job's deliveries in the transaction of its state change (the
outbox pattern, so a change is never committed without its delivery nor the other way round).
Its ``WHEN`` is checked before anything else runs, so a job without ``notify`` pays one
null test per updated row and nothing more.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# "final": only a final state is sent; "state": every change. An array's own row changes state
# as its elements do (``stratus_array_refresh``); elements never carry notify.
_ENQUEUE = """
CREATE FUNCTION stratus_webhook_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(NEW.notify) = 'object' AND (NEW.notify -> 'events' ? 'state'
       OR NEW.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')) THEN
        INSERT INTO webhook_deliveries (id, tenant_id, job_id, url, payload)
        SELECT d.id, NEW.tenant_id, NEW.id, NEW.notify ->> 'url',
               jsonb_build_object(
                   'id', d.id, 'event', 'job.state', 'job_id', NEW.id,
                   'state', NEW.state, 'previous_state', OLD.state,
                   'reason', NEW.state_reason, 'at', now())
        FROM (SELECT gen_random_uuid() AS id) d;
    END IF;
    RETURN NULL;
END
$$
"""

_TRIGGER = """
CREATE TRIGGER jobs_webhooks AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (NEW.notify IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION stratus_webhook_enqueue()
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("notify", postgresql.JSONB()))
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_webhook_secrets_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_webhook_secrets"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("state", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')",
            name="ck_webhook_deliveries_state_known",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_webhook_deliveries_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_webhook_deliveries_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_finished",
        "webhook_deliveries",
        ["finished_at"],
        postgresql_where=sa.text("state <> 'pending'"),
    )
    op.execute(_ENQUEUE)
    op.execute(_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_webhooks ON jobs")
    op.execute("DROP FUNCTION stratus_webhook_enqueue()")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_column("jobs", "notify")
