"""job dependencies, workflows and provenance

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 16:30:00.000000

A job (or array) waits on others through ``job_deps`` edges, one per dependency not yet
settled, and ``jobs.deps_left`` counts them: admission and materialisation take only rows
with ``deps_left = 0``. The release is the database's: a statement-level trigger on
``jobs`` (insert and update) passes the rows that became final in the statement to
``stratus_deps_resolve``, which deletes their edges (each edge once: a DELETE), lowers the
dependents' counts, and cancels the dependents whose condition can no longer hold, all in
the transaction that made the dependency final. A cancel is an update of ``jobs`` again,
so the trigger carries it on to their own dependents (transitively). The submission calls
the same function for the dependencies it found final already (``shared.jobs.deps``).

Provenance: a job that becomes SUCCEEDED gets its ``receipt`` in the statement that records
it (a row trigger, BEFORE, so no second row version): what it ran, the checksums of its
inputs and outputs as the catalogue holds them at that moment (its outputs are published in
that transaction), the software its worker reported (``workers.software``); its attempt's
CPU seconds are added when the attempt's row is written. Its outputs' rows get
``produced_by``; bytes written by anything else (an upload) clear it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')"
NEVER = "dependency_never_satisfied"
ADMIT_REASON = "waiting for a worker slot"  # shared.jobs.store.ADMIT_REASON


def _element_id(array_id: str, index: str) -> str:
    """``shared.jobs.arrays.element_id_sql``, as it was when this migration was written."""
    return f"(left(replace({array_id}::text, '-', ''), 20) || lpad(to_hex({index}), 12, '0'))::uuid"


def _resolve(history_has_tenant: bool) -> str:
    """``stratus_deps_resolve(finals)``: settle the edges on ``finals`` (jobs that are final;
    for an element without a row, its array: such an element was cancelled with it), then on
    the jobs that settling cancelled, generation after generation, in a loop: the trigger
    stands aside meanwhile (``stratus.deps_resolving``), so a long chain costs no stack."""
    tenant_col = ", tenant_id" if history_has_tenant else ""
    tenant_val = ", c.tenant_id" if history_has_tenant else ""
    return f"""
CREATE FUNCTION stratus_deps_resolve(finals uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
    v_met int[];
    v_never bool[];
    v_ready int;
    v_arrays uuid[];
    v_next uuid[];
    v_corr uuid[];
    v_outer text := coalesce(current_setting('stratus.deps_resolving', true), '');
BEGIN
    PERFORM set_config('stratus.deps_resolving', '1', true);
    WHILE finals IS NOT NULL AND cardinality(finals) > 0 LOOP
        v_corr := stratus_corr_materialise(finals);
        WITH hit AS (
            SELECT d.job_id, d.dep_id, d.condition, j.state AS s
            FROM job_deps d JOIN jobs j ON j.id = d.dep_id
            WHERE d.dep_id = ANY(finals) AND j.state IN {FINAL}
            UNION ALL
            SELECT d.job_id, d.dep_id, d.condition, 'CANCELLED'
            FROM job_deps d
            WHERE d.dep_array = ANY(finals)
              AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.id = d.dep_id)
              AND EXISTS (SELECT 1 FROM jobs a WHERE a.id = d.dep_array AND a.state IN {FINAL})
        ), gone AS (
            DELETE FROM job_deps d USING hit
            WHERE d.job_id = hit.job_id AND d.dep_id = hit.dep_id
            RETURNING d.job_id, d.condition, hit.s
        ), judged AS (
            SELECT job_id, count(*)::int AS n,
                   bool_or(CASE condition
                               WHEN 'afterok' THEN s <> 'SUCCEEDED'
                               WHEN 'afternotok' THEN s = 'SUCCEEDED'
                               ELSE false END) AS never
            FROM gone GROUP BY job_id
        )
        SELECT array_agg(job_id ORDER BY job_id), array_agg(n ORDER BY job_id),
               array_agg(never ORDER BY job_id)
        INTO v_ids, v_met, v_never FROM judged;
        IF v_ids IS NULL THEN
            finals := v_corr;
            CONTINUE;
        END IF;
        -- the dependents in id order, as every batch of jobs locks its rows
        PERFORM 1 FROM jobs WHERE id = ANY(v_ids) ORDER BY id FOR UPDATE;
        UPDATE jobs j SET deps_left = j.deps_left - u.n,
                          state_reason = CASE WHEN j.deps_left = u.n AND NOT u.never
                                              AND j.state = 'PENDING' THEN NULL
                                              ELSE j.state_reason END
        FROM unnest(v_ids, v_met, v_never) AS u(id, n, never)
        WHERE j.id = u.id;
        SELECT count(*) INTO v_ready FROM jobs
        WHERE id = ANY(v_ids) AND deps_left = 0 AND state = 'PENDING';
        IF v_ready > 0 THEN
            PERFORM pg_notify('stratus_scheduler', 'job.released');
        END IF;
        -- conditions that can no longer hold: jobs CANCELLED (with their history row) ...
        WITH cancelled AS (
            UPDATE jobs j SET state = 'CANCELLED', state_reason = '{NEVER}',
                              finished_at = now(), updated_at = now()
            FROM unnest(v_ids, v_never) AS u(id, never)
            WHERE j.id = u.id AND u.never AND j.state = 'PENDING' AND NOT j.is_array
            RETURNING j.id, j.tenant_id, j.attempts
        ), history AS (
            INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, at{tenant_col})
            SELECT c.id, c.attempts, 'PENDING', 'CANCELLED', '{NEVER}', now(){tenant_val}
            FROM cancelled c
        )
        SELECT array_agg(id) INTO v_next FROM cancelled;
        -- ... and arrays cancelled whole (nothing of them ran: they waited)
        SELECT array_agg(j.id ORDER BY j.id) INTO v_arrays
        FROM jobs j JOIN unnest(v_ids, v_never) AS u(id, never) ON j.id = u.id
        WHERE u.never AND j.is_array AND j.state NOT IN {FINAL};
        IF v_arrays IS NOT NULL THEN
            UPDATE job_arrays SET cancelled = true, n_cancelled = n_cancelled + n_pending,
                                  n_pending = 0
            WHERE job_id = ANY(v_arrays);
            UPDATE jobs SET state_reason = '{NEVER}' WHERE id = ANY(v_arrays);
            PERFORM stratus_array_refresh(v_arrays);
            v_next := v_next || ARRAY(
                SELECT id FROM jobs WHERE id = ANY(v_arrays) AND state IN {FINAL});
        END IF;
        finals := v_next || v_corr;  -- the next generation: what this one made final
    END LOOP;
    PERFORM set_config('stratus.deps_resolving', v_outer, true);
END
$$
"""  # noqa: S608 (built from constants only)


# ``aftercorr``: array B (``job_deps.job_id``) waits element by element on array A (its
# ``dep_id``); B is never materialised by the scheduler (its ``deps_left`` stays 1 until A
# ends). When A's element i ends, B's element i gets its row here, in that transaction:
# runnable (QUEUED, or PENDING for admission when it reads datasets) if A's succeeded, else
# CANCELLED (never satisfied). When A ends, every element of B gets its row (the release of
# A's own row may come before its last element's, in a nested trigger); A's elements without
# a row were cancelled with it. The row is ``shared.jobs.arrays.element_of`` in SQL, as the
# materialisation writes it (tests hold the two together). Returns what it made final: B's
# elements cancelled, and the B arrays that are final now.
CORR = f"""
CREATE FUNCTION stratus_corr_materialise(finals uuid[]) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_cancelled uuid[];
    v_arrays uuid[];
BEGIN
    WITH ended AS (
        SELECT d.job_id AS b, e.array_index AS i, e.state AS s
        FROM jobs e JOIN job_deps d ON d.dep_id = e.array_id AND d.condition = 'aftercorr'
        WHERE e.id = ANY(finals) AND e.array_id IS NOT NULL AND e.state IN {FINAL}
        UNION ALL
        SELECT d.job_id, i, coalesce(e.state, 'CANCELLED')
        FROM jobs a
        JOIN job_deps d ON d.dep_id = a.id AND d.condition = 'aftercorr'
        JOIN job_arrays aa ON aa.job_id = a.id
        CROSS JOIN LATERAL generate_series(0, aa.size - 1) AS i
        LEFT JOIN jobs e ON e.id = {_element_id("a.id", "i")}
        WHERE a.id = ANY(finals) AND a.is_array AND a.state IN {FINAL}
          AND (e.id IS NULL OR e.state IN {FINAL})
    ), inserted AS (
        INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, labels,
                          output_tier, priority, timeout_s, max_retries, state, state_reason,
                          attempts, created_at, updated_at, queued_at, finished_at, is_array,
                          array_id, array_index)
        SELECT {_element_id("p.id", "ended.i")}, p.tenant_id, p.kernel, p.device,
               p.params || coalesce(ba.overrides -> ended.i, '{{}}'::jsonb)
                   || CASE WHEN ba.index_param IS NULL THEN '{{}}'::jsonb
                           ELSE jsonb_build_object(ba.index_param, ended.i) END,
               replace(p.inputs::text, '{{index}}', ended.i::text)::jsonb,
               replace(p.outputs::text, '{{index}}', ended.i::text)::jsonb,
               p.labels, p.output_tier, p.priority, p.timeout_s, p.max_retries,
               CASE WHEN ended.s <> 'SUCCEEDED' THEN 'CANCELLED'
                    WHEN p.inputs = '{{}}'::jsonb THEN 'QUEUED' ELSE 'PENDING' END,
               CASE WHEN ended.s <> 'SUCCEEDED' THEN '{NEVER}'
                    WHEN p.inputs = '{{}}'::jsonb THEN '{ADMIT_REASON}' END,
               0, p.created_at, now(),
               CASE WHEN ended.s = 'SUCCEEDED' AND p.inputs = '{{}}'::jsonb THEN now() END,
               CASE WHEN ended.s <> 'SUCCEEDED' THEN now() END,
               false, p.id, ended.i
        FROM ended
        JOIN jobs p ON p.id = ended.b
        JOIN job_arrays ba ON ba.job_id = p.id AND NOT ba.cancelled
        ON CONFLICT DO NOTHING
        RETURNING id, state, array_id
    )
    SELECT coalesce(array_agg(id) FILTER (WHERE state = 'CANCELLED'), '{{}}'),
           coalesce(array_agg(DISTINCT array_id), '{{}}')
    INTO v_cancelled, v_arrays FROM inserted;
    -- A ended: every element of B has its row now, none is left to materialise
    UPDATE job_arrays ba SET next_index = ba.size
    FROM job_deps d JOIN jobs a ON a.id = d.dep_id
    WHERE d.condition = 'aftercorr' AND ba.job_id = d.job_id
      AND a.id = ANY(finals) AND a.is_array AND a.state IN {FINAL};
    RETURN v_cancelled || ARRAY(SELECT id FROM jobs WHERE id = ANY(v_arrays)
                                AND state IN {FINAL});
END
$$
"""  # noqa: S608 (built from constants only)


RELEASE = f"""
CREATE FUNCTION stratus_deps_release() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    finals uuid[];
BEGIN
    IF current_setting('stratus.deps_resolving', true) = '1' THEN
        RETURN NULL;  -- a cancel of stratus_deps_resolve's own: its loop goes on with it
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id) INTO finals FROM new_rows WHERE state IN {FINAL};
    ELSE
        SELECT array_agg(n.id) INTO finals
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.state IN {FINAL} AND o.state NOT IN {FINAL};
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


RECEIPT = f"""
CREATE FUNCTION stratus_receipt() RETURNS trigger
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
        'cpu_seconds', (SELECT a.cpu_seconds FROM job_attempts a
                        WHERE a.job_id = NEW.id AND a.attempt = NEW.attempts));
    UPDATE datasets d SET produced_by = NEW.id
    FROM jsonb_each_text(NEW.outputs) o
    WHERE d.tenant_id = NEW.tenant_id AND d.name = o.value;
    RETURN NEW;
END
$$
"""  # noqa: S608 (built from constants only)

# The attempt's CPU seconds, when its row is written after the job's (in the statement or
# the transaction that records the job; written before, ``stratus_receipt`` reads it).
RECEIPT_CPU = """
CREATE FUNCTION stratus_receipt_cpu() RETURNS trigger
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

# Bytes written by anything else than the job's record (an upload) are no job's output.
UNPRODUCED = """
CREATE FUNCTION stratus_dataset_unproduced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.produced_by := NULL;
    RETURN NEW;
END
$$
"""


def _history_has_tenant() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("job_events")
    return any(c["name"] == "tenant_id" for c in columns)


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("steps", JSONB(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_workflows_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_workflows_tenant_id_idempotency_key")
        ),
    )
    op.create_index(
        "ix_workflows_tenant_id_created_at_id", "workflows", ["tenant_id", "created_at", "id"]
    )
    op.add_column("jobs", sa.Column("deps_left", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("depends_on", JSONB(), nullable=True))
    op.add_column("jobs", sa.Column("workflow_id", UUID(as_uuid=True), nullable=True))
    op.create_check_constraint(op.f("ck_jobs_deps_left_natural"), "jobs", "deps_left >= 0")
    op.create_foreign_key(
        "fk_jobs_workflow_id_workflows",
        "jobs",
        "workflows",
        ["workflow_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_jobs_workflow_id",
        "jobs",
        ["workflow_id"],
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.create_table(
        "job_deps",
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("dep_id", UUID(as_uuid=True), nullable=False),
        sa.Column("dep_array", UUID(as_uuid=True), nullable=True),
        sa.Column("condition", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "condition IN ('afterok', 'afternotok', 'afterany', 'aftercorr')",
            name=op.f("ck_job_deps_condition_known"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_deps_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "dep_id", name=op.f("pk_job_deps")),
    )
    op.create_index("ix_job_deps_dep_id", "job_deps", ["dep_id"])
    op.create_index(
        "ix_job_deps_dep_array",
        "job_deps",
        ["dep_array"],
        postgresql_where=sa.text("dep_array IS NOT NULL"),
    )
    op.add_column("jobs", sa.Column("receipt", JSONB(), nullable=True))
    op.add_column("datasets", sa.Column("produced_by", UUID(as_uuid=True), nullable=True))
    op.add_column("workers", sa.Column("software", JSONB(), nullable=True))
    op.execute(RECEIPT)
    op.execute(RECEIPT_CPU)
    op.execute(UNPRODUCED)
    op.execute(
        "CREATE TRIGGER stratus_receipt_update BEFORE UPDATE ON jobs FOR EACH ROW"
        " WHEN (NEW.state = 'SUCCEEDED' AND OLD.state <> 'SUCCEEDED' AND NOT NEW.is_array)"
        " EXECUTE FUNCTION stratus_receipt()"
    )
    op.execute(
        "CREATE TRIGGER stratus_receipt_insert BEFORE INSERT ON jobs FOR EACH ROW"
        " WHEN (NEW.state = 'SUCCEEDED' AND NOT NEW.is_array)"
        " EXECUTE FUNCTION stratus_receipt()"
    )
    op.execute(
        "CREATE TRIGGER stratus_receipt_cpu AFTER INSERT ON job_attempts"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_receipt_cpu()"
    )
    op.execute(
        "CREATE TRIGGER stratus_dataset_unproduced BEFORE UPDATE ON datasets FOR EACH ROW"
        " WHEN (NEW.checksum IS DISTINCT FROM OLD.checksum"
        " AND NEW.produced_by IS NOT DISTINCT FROM OLD.produced_by)"
        " EXECUTE FUNCTION stratus_dataset_unproduced()"
    )
    op.execute(CORR)
    op.execute(_resolve(_history_has_tenant()))
    op.execute(RELEASE)
    op.execute(
        "CREATE TRIGGER stratus_deps_release_insert AFTER INSERT ON jobs"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_deps_release()"
    )
    op.execute(
        "CREATE TRIGGER stratus_deps_release_update AFTER UPDATE ON jobs"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION stratus_deps_release()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER stratus_deps_release_update ON jobs")
    op.execute("DROP TRIGGER stratus_deps_release_insert ON jobs")
    op.execute("DROP FUNCTION stratus_deps_release()")
    op.execute("DROP FUNCTION stratus_deps_resolve(uuid[])")
    op.execute("DROP FUNCTION stratus_corr_materialise(uuid[])")
    op.execute("DROP TRIGGER stratus_dataset_unproduced ON datasets")
    op.execute("DROP TRIGGER stratus_receipt_cpu ON job_attempts")
    op.execute("DROP TRIGGER stratus_receipt_insert ON jobs")
    op.execute("DROP TRIGGER stratus_receipt_update ON jobs")
    op.execute("DROP FUNCTION stratus_dataset_unproduced()")
    op.execute("DROP FUNCTION stratus_receipt_cpu()")
    op.execute("DROP FUNCTION stratus_receipt()")
    op.drop_column("workers", "software")
    op.drop_column("datasets", "produced_by")
    op.drop_column("jobs", "receipt")
    op.drop_index("ix_job_deps_dep_array", table_name="job_deps")
    op.drop_index("ix_job_deps_dep_id", table_name="job_deps")
    op.drop_table("job_deps")
    op.drop_index("ix_jobs_workflow_id", table_name="jobs")
    op.drop_constraint("fk_jobs_workflow_id_workflows", "jobs", type_="foreignkey")
    op.drop_constraint(op.f("ck_jobs_deps_left_natural"), "jobs", type_="check")
    op.drop_column("jobs", "workflow_id")
    op.drop_column("jobs", "depends_on")
    op.drop_column("jobs", "deps_left")
    op.drop_index("ix_workflows_tenant_id_created_at_id", table_name="workflows")
    op.drop_table("workflows")
