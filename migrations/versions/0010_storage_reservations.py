"""storage reservations: bytes a tenant's uploads, job outputs and copies in progress hold
against its storage_bytes quota

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_reservations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("bytes >= 0", name=op.f("ck_storage_reservations_bytes_non_negative")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_storage_reservations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_reservations")),
    )
    op.create_index(
        "ix_storage_reservations_tenant", "storage_reservations", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_storage_reservations_tenant", table_name="storage_reservations")
    op.drop_table("storage_reservations")
