"""outbox rows may be published through a delay queue (retry wake-ups)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 18:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("delay_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "delay_ms")
