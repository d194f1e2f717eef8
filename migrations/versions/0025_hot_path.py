"""the single-job hot path: triggers cost nothing for the jobs they do not concern

- ``stratus_deps_release`` calls ``stratus_deps_resolve`` only for the jobs that became final
  and something depends on (an edge on the job, on its array, or an ``aftercorr`` edge on
  its array): a plain job's end no longer runs the resolver's queries (its ``aftercorr``
  materialisation, the edges' lookup) in the statement that records it. The resolver sees
  the same edges the check saw (both read ``job_deps`` in the same transaction, after the
  job's row is written), so what it does for the jobs it is given is unchanged.
- ``stratus_receipt`` reads the catalogue only for a job that names inputs or outputs: a
  job without datasets gets the same receipt (``inputs`` and ``outputs`` empty objects)
  without the two lookups and the ``datasets`` update.
- ``stratus_receipt_insert`` and ``stratus_receipt_update`` are not called for a row that
  arrives with its whole receipt: an array chunk's flush makes its elements' receipts in its
  statement, and the worker's set-based record its jobs' (those without datasets), one
  ``workers`` lookup per statement instead of a trigger call per row.
- ``stratus_deps_release`` returns at once from a statement that made no job final (a
  claim, a dispatch: most statements on ``jobs``), without joining the old rows to the new.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 20:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')"

# Something depends on the job ``n`` (a row of the trigger's ``new_rows``): an edge on it, an
# edge on an element of it without a row (``dep_array``), or, for an element, an
# ``aftercorr`` edge on its array (``stratus_corr_materialise`` then makes the dependent's
# element). One index probe each (``ix_job_deps_dep_id``, ``ix_job_deps_dep_array``).
_DEPENDED_ON = """(
            EXISTS (SELECT 1 FROM job_deps d WHERE d.dep_id = n.id)
            OR EXISTS (SELECT 1 FROM job_deps d WHERE d.dep_array = n.id)
            OR (n.array_id IS NOT NULL
                AND EXISTS (SELECT 1 FROM job_deps d
                            WHERE d.dep_id = n.array_id AND d.condition = 'aftercorr')))"""


# Most statements on ``jobs`` end no job (a claim, a dispatch): one scan of the new rows and
# out, without the old rows' join.
_NONE_FINAL = f"""IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state IN {FINAL}) THEN
        RETURN NULL;
    END IF;
    """  # noqa: S608 (built from constants only)


def _release(depended_on: str, guard: str = "") -> str:
    return f"""
CREATE OR REPLACE FUNCTION stratus_deps_release() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    finals uuid[];
BEGIN
    {guard}IF current_setting('stratus.deps_resolving', true) = '1' THEN
        RETURN NULL;  -- a cancel of stratus_deps_resolve's own: its loop goes on with it
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.id) INTO finals FROM new_rows n
        WHERE n.state IN {FINAL} AND {depended_on};
    ELSE
        SELECT array_agg(n.id) INTO finals
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.state IN {FINAL} AND o.state NOT IN {FINAL} AND {depended_on};
    END IF;
    IF finals IS NOT NULL THEN
        PERFORM stratus_deps_resolve(finals);
    END IF;
    RETURN NULL;
END
$$
"""  # noqa: S608 (built from constants only)


_CHECKSUMS = """(
            SELECT coalesce(jsonb_object_agg(
                       x.key, jsonb_build_object('dataset', x.value, 'checksum', d.checksum)),
                   '{{}}'::jsonb)
            FROM jsonb_each_text(NEW.{side}) x
            LEFT JOIN datasets d ON d.tenant_id = NEW.tenant_id AND d.name = x.value)"""

_FROM_ATTEMPT = """(SELECT a.cpu_seconds FROM job_attempts a
                        WHERE a.job_id = NEW.id AND a.attempt = NEW.attempts)"""
_CPU = f"coalesce(NEW.receipt -> 'cpu_seconds', to_jsonb({_FROM_ATTEMPT}))"


def _receipt(*, skip_empty: bool) -> str:
    """``stratus_receipt`` (migration 0023's), with ``skip_empty``: no catalogue lookup for a
    side that names no dataset, no ``datasets`` update for a job without outputs."""

    def side(name: str) -> str:
        checksums = _CHECKSUMS.format(side=name)
        if not skip_empty:
            return checksums
        return f"CASE WHEN NEW.{name} = '{{}}'::jsonb THEN '{{}}'::jsonb ELSE {checksums} END"

    produced = """UPDATE datasets d SET produced_by = NEW.id
    FROM jsonb_each_text(NEW.outputs) o
    WHERE d.tenant_id = NEW.tenant_id AND d.name = o.value;"""
    if skip_empty:
        produced = f"""IF NEW.outputs <> '{{}}'::jsonb THEN
        {produced}
    END IF;"""
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
        'inputs', {side("inputs")},
        'outputs', {side("outputs")},
        'software', coalesce(v_software - 'stratus', '{{}}'::jsonb),
        'worker', NEW.worker,
        'cpu_seconds', {_CPU});
    {produced}
    RETURN NEW;
END
$$
"""  # noqa: S608 (built from constants only)


def _receipt_trigger(event: str, when: str) -> list[str]:
    name = f"stratus_receipt_{event.lower()}"
    return [
        f"DROP TRIGGER {name} ON jobs",
        f"CREATE TRIGGER {name} BEFORE {event} ON jobs FOR EACH ROW"
        f" WHEN ({when}) EXECUTE FUNCTION stratus_receipt()",
    ]


_INSERTED_SUCCEEDED = "NEW.state = 'SUCCEEDED' AND NOT NEW.is_array"
# A row inserted with its whole receipt (an array chunk's flush makes its elements' receipts
# set-based, ``shared.jobs.chunks``) needs no trigger call; only the trigger writes ``kernel``.
_WITHOUT_RECEIPT = f"{_INSERTED_SUCCEEDED} AND (NEW.receipt IS NULL OR NOT NEW.receipt ? 'kernel')"
# The same for an update (the worker's set-based record of a job without datasets,
# ``shared.jobs.store.FINISH_ATTEMPTS``): a receipt the statement gives, not one kept.
_UPDATED_SUCCEEDED = "NEW.state = 'SUCCEEDED' AND OLD.state <> 'SUCCEEDED' AND NOT NEW.is_array"
_UPDATED_WITHOUT_RECEIPT = (
    f"{_UPDATED_SUCCEEDED} AND (NEW.receipt IS NULL OR NOT NEW.receipt ? 'kernel'"
    " OR NEW.receipt IS NOT DISTINCT FROM OLD.receipt)"
)


def upgrade() -> None:
    op.execute(_release(_DEPENDED_ON, _NONE_FINAL))
    op.execute(_receipt(skip_empty=True))
    for statement in _receipt_trigger("INSERT", _WITHOUT_RECEIPT):
        op.execute(statement)
    for statement in _receipt_trigger("UPDATE", _UPDATED_WITHOUT_RECEIPT):
        op.execute(statement)


def downgrade() -> None:
    op.execute(_release("true"))
    op.execute(_receipt(skip_empty=False))
    for statement in _receipt_trigger("INSERT", _INSERTED_SUCCEEDED):
        op.execute(statement)
    for statement in _receipt_trigger("UPDATE", _UPDATED_SUCCEEDED):
        op.execute(statement)
