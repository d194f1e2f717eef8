"""``workers.run_s``: how long a worker's recent jobs held their slot (an exponential
average, from its heartbeat; NULL before its first job). The scheduler dispatches more jobs
ahead of workers whose jobs are short (``STRATUS_DISPATCH_AHEAD_S``), so that their slots do
not idle between dispatch passes.

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-07 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0033"
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("run_s", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "run_s")
