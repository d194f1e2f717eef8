"""an array's started_at is set when its first element leaves PENDING, never by a cancel of
an array that never ran

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 14:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As 0013's, but ``started_at`` only once an element is queued: the array passes through
# RUNNING then (n_pending < size with elements not final); an array cancelled while every
# element was pending goes from PENDING to CANCELLED and keeps no start.
_REFRESH = """
CREATE OR REPLACE FUNCTION stratus_array_refresh(ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE jobs j SET
        state = d.state,
        started_at = CASE WHEN d.state = 'RUNNING' THEN coalesce(j.started_at, now())
                          ELSE j.started_at END,
        finished_at = CASE WHEN d.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
                      THEN coalesce(j.finished_at, now()) END,
        updated_at = now()
    FROM (
        SELECT job_id,
               CASE WHEN n_pending = size THEN 'PENDING'
                    WHEN n_pending + n_queued + n_running > 0 THEN 'RUNNING'
                    WHEN n_succeeded = size THEN 'SUCCEEDED'
                    WHEN cancelled THEN 'CANCELLED'
                    ELSE 'FAILED' END AS state
        FROM job_arrays WHERE job_id = ANY(ids)
    ) d
    WHERE j.id = d.job_id AND j.state IS DISTINCT FROM d.state
$$
"""

_PREVIOUS = _REFRESH.replace(
    """        started_at = CASE WHEN d.state = 'RUNNING' THEN coalesce(j.started_at, now())
                          ELSE j.started_at END,""",
    """        started_at = CASE WHEN d.state <> 'PENDING' THEN coalesce(j.started_at, now())
                     END,""",
)


def upgrade() -> None:
    op.execute(_REFRESH)


def downgrade() -> None:
    op.execute(_PREVIOUS)
