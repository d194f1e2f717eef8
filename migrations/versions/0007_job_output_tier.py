"""jobs name the tier their outputs are published on

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 19:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("output_tier", sa.String(32), nullable=False, server_default="local"),
    )


def downgrade() -> None:
    op.drop_column("jobs", "output_tier")
