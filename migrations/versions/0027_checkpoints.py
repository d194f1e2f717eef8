"""checkpoints and preemptions: a job's checkpoint interval, its checkpoint and preemption
counts, and the step it last resumed from

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06 20:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # constant defaults: no table rewrite
    op.execute(
        """
        ALTER TABLE jobs
            ADD COLUMN checkpoint_interval_s integer NOT NULL DEFAULT 30,
            ADD COLUMN checkpoints integer NOT NULL DEFAULT 0,
            ADD COLUMN preemptions integer NOT NULL DEFAULT 0,
            ADD COLUMN resumed_from bigint,
            ADD CONSTRAINT ck_jobs_checkpoint_interval_range
                CHECK (checkpoint_interval_s BETWEEN 0 AND 86400)
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs
            DROP CONSTRAINT IF EXISTS ck_jobs_checkpoint_interval_range,
            DROP COLUMN IF EXISTS resumed_from,
            DROP COLUMN IF EXISTS preemptions,
            DROP COLUMN IF EXISTS checkpoints,
            DROP COLUMN IF EXISTS checkpoint_interval_s
        """
    )
