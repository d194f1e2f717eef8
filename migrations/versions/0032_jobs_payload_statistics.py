"""no planner statistics for the payload columns of ``jobs``: no query filters, joins or
sorts on them, and gathering them (sorting JSONB documents) was most of what an ANALYZE of
``jobs`` cost: 59-77 ms a run at 6,000 rows with them, 31 ms without, on a 2-core host. The
scheduler analyzes ``jobs`` as it grows where autovacuum is off (``shared.db.maintenance``),
and autovacuum does the same where it is on.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-07 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What a job carries and reports, never a condition of a query (``labels`` is one: kept).
PAYLOAD = (
    "params",
    "inputs",
    "outputs",
    "result",
    "receipt",
    "pins",
    "notify",
    "depends_on",
    "state_reason",
    "error",
    "request_hash",
)


def _statistics(target: int) -> None:
    columns = ", ".join(f"ALTER COLUMN {c} SET STATISTICS {target}" for c in PAYLOAD)
    op.execute(f"ALTER TABLE jobs {columns}")


def upgrade() -> None:
    _statistics(0)  # no statistics gathered


def downgrade() -> None:
    _statistics(-1)  # the server's default_statistics_target again
