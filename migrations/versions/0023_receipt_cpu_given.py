"""a receipt's CPU seconds may come with the row that records the job: an array chunk's flush
gives them, so its elements are not written a second time

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 17:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECKSUMS = """(
            SELECT coalesce(jsonb_object_agg(
                       x.key, jsonb_build_object('dataset', x.value, 'checksum', d.checksum)),
                   '{{}}'::jsonb)
            FROM jsonb_each_text(NEW.{side}) x
            LEFT JOIN datasets d ON d.tenant_id = NEW.tenant_id AND d.name = x.value)"""


def _receipt(cpu: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION stratus_receipt() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_software jsonb := (SELECT software FROM workers WHERE id = NEW.worker);
BEGIN
    NEW.receipt := jsonb_build_object(
        'kernel', NEW.kernel,
        'kernel_version', v_software ->> 'stratus',
        'params', NEW.params,
        'device', NEW.assigned_device,
        'inputs', {_CHECKSUMS.format(side="inputs")},
        'outputs', {_CHECKSUMS.format(side="outputs")},
        'software', coalesce(v_software - 'stratus', '{{}}'::jsonb),
        'worker', NEW.worker,
        'cpu_seconds', {cpu});
    UPDATE datasets d SET produced_by = NEW.id
    FROM jsonb_each_text(NEW.outputs) o
    WHERE d.tenant_id = NEW.tenant_id AND d.name = o.value;
    RETURN NEW;
END
$$
"""  # noqa: S608 (built from constants only)


_FROM_ATTEMPT = """(SELECT a.cpu_seconds FROM job_attempts a
                        WHERE a.job_id = NEW.id AND a.attempt = NEW.attempts)"""

# A row that arrives with ``receipt = {"cpu_seconds": x}`` (an array chunk's flush, which
# knows each element's CPU time) keeps x; any other reads the attempt's usage row, written
# before it or, later in the transaction, filled in by ``stratus_receipt_cpu``.
RECEIPT = _receipt(f"coalesce(NEW.receipt -> 'cpu_seconds', to_jsonb({_FROM_ATTEMPT}))")

# Only receipts still without their CPU seconds are written again.
RECEIPT_CPU = """
CREATE OR REPLACE FUNCTION stratus_receipt_cpu() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs j SET receipt = jsonb_set(j.receipt, '{cpu_seconds}', to_jsonb(a.cpu_seconds))
    FROM new_rows a
    WHERE a.outcome = 'SUCCEEDED' AND j.id = a.job_id AND j.attempts = a.attempt
      AND j.receipt IS NOT NULL
      AND coalesce(j.receipt -> 'cpu_seconds', 'null'::jsonb) = 'null'::jsonb;
    RETURN NULL;
END
$$
"""

RECEIPT_CPU_BEFORE = """
CREATE OR REPLACE FUNCTION stratus_receipt_cpu() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs j SET receipt = jsonb_set(j.receipt, '{cpu_seconds}', to_jsonb(a.cpu_seconds))
    FROM new_rows a
    WHERE a.outcome = 'SUCCEEDED' AND j.id = a.job_id AND j.attempts = a.attempt
      AND j.receipt IS NOT NULL;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(RECEIPT)
    op.execute(RECEIPT_CPU)


def downgrade() -> None:
    op.execute(_receipt(_FROM_ATTEMPT))
    op.execute(RECEIPT_CPU_BEFORE)
