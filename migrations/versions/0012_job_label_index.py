"""an index for the label filter of the job list (``?label=k:v``), over labelled jobs only

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_labelled",
        "jobs",
        ["labels"],
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
        postgresql_where=sa.text("labels <> '{}'::jsonb"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_labelled", table_name="jobs")
