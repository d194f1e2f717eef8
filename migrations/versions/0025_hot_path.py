"""the single-job hot path and the arrays' usage rows (placeholder: no change yet)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 20:00:00.000000
"""

from collections.abc import Sequence

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
