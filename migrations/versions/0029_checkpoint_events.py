"""checkpoint events and the preemption gap: a job's checkpoints as rows of its history (kind
``checkpoint``, the step and the job's count so far), and each pool's last preemption

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-06 23:15:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable columns without a default: no table rewrite
    op.execute(
        """
        ALTER TABLE job_events
            ADD COLUMN step bigint,
            ADD COLUMN checkpoints integer
        """
    )
    # one row per pool (device): when a scheduler last preempted there, on the database's
    # clock, so that the gap holds across restarts and between schedulers
    op.execute(
        """
        CREATE TABLE preemption_gaps (
            pool varchar(16) PRIMARY KEY,
            last_at timestamptz NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS preemption_gaps")
    op.execute(
        """
        ALTER TABLE job_events
            DROP COLUMN IF EXISTS checkpoints,
            DROP COLUMN IF EXISTS step
        """
    )
