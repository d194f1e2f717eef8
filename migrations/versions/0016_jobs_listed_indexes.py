"""the job list's indexes over the jobs it lists only: not the elements of arrays

``GET /v1/jobs`` lists jobs and arrays, never an array's elements (``array_id IS NULL``).
Elements are rows with their array's tenant, ``created_at`` and labels, so in the full
indexes a page scanned past every materialised element of the arrays it crossed; partial
indexes skip them, and an element's insert and state changes no longer write to them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 14:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created(where: str | None) -> None:
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.create_index(
        "ix_jobs_tenant_created",
        "jobs",
        ["tenant_id", "created_at", "id"],
        postgresql_where=None if where is None else sa.text(where),
    )


def _labelled(where: str) -> None:
    op.drop_index("ix_jobs_labelled", table_name="jobs")
    op.create_index(
        "ix_jobs_labelled",
        "jobs",
        ["labels"],
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    _created("array_id IS NULL")
    _labelled("labels <> '{}'::jsonb AND array_id IS NULL")


def downgrade() -> None:
    _labelled("labels <> '{}'::jsonb")
    _created(None)
