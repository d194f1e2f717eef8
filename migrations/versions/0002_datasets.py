"""datasets, migrations and migration chunks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=80), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=False),
        sa.Column("tiers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("size >= 0", name=op.f("ck_datasets_size_non_negative")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_datasets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_datasets_tenant_id_name")),
    )
    op.create_index(
        "ix_datasets_tenant_created", "datasets", ["tenant_id", "created_at", "id"], unique=False
    )
    op.create_table(
        "migrations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("from_tier", sa.String(length=32), nullable=False),
        sa.Column("to_tier", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_copied", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=80), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("upload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        *_timestamps(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED')",
            name=op.f("ck_migrations_state_known"),
        ),
        sa.CheckConstraint("mode IN ('copy', 'move')", name=op.f("ck_migrations_mode_known")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_migrations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migrations")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_migrations_tenant_id_idempotency_key")
        ),
    )
    op.create_index(
        "ix_migrations_tenant_created",
        "migrations",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_migrations_tenant_state_created",
        "migrations",
        ["tenant_id", "state", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_migrations_active",
        "migrations",
        ["state", "created_at"],
        unique=False,
        postgresql_where="state IN ('PENDING', 'RUNNING')",
    )
    op.create_index(
        "ix_migrations_job_id",
        "migrations",
        ["job_id"],
        unique=False,
        postgresql_where="job_id IS NOT NULL",
    )
    op.create_table(
        "migration_chunks",
        sa.Column("migration_id", sa.UUID(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["migration_id"],
            ["migrations.id"],
            name=op.f("fk_migration_chunks_migration_id_migrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("migration_id", "idx", name=op.f("pk_migration_chunks")),
    )


def downgrade() -> None:
    op.drop_table("migration_chunks")
    op.drop_index(
        "ix_migrations_job_id", table_name="migrations", postgresql_where="job_id IS NOT NULL"
    )
    op.drop_index(
        "ix_migrations_active",
        table_name="migrations",
        postgresql_where="state IN ('PENDING', 'RUNNING')",
    )
    op.drop_index("ix_migrations_tenant_state_created", table_name="migrations")
    op.drop_index("ix_migrations_tenant_created", table_name="migrations")
    op.drop_table("migrations")
    op.drop_index("ix_datasets_tenant_created", table_name="datasets")
    op.drop_table("datasets")
