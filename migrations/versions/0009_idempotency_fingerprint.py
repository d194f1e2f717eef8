"""an idempotent request remembers a fingerprint of its body (a reused key with another body
is refused)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("jobs", "migrations"):
        op.add_column(table, sa.Column("request_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    for table in ("jobs", "migrations"):
        op.drop_column(table, "request_hash")
