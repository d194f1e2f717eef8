"""pinned inputs: the checksum each pinned input's dataset must have when the job is admitted

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


def upgrade() -> None:
    # ``{input name: checksum}`` for the pinned inputs (``inputs`` keeps their names), NULL
    # when none is pinned: checked at submit and when the scheduler admits the job.
    op.add_column("jobs", sa.Column("pins", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "pins")
