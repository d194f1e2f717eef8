"""Late materialisation of array elements: the scheduler's step that turns the next pending
elements of open arrays into ``jobs`` rows, bounded per array and per pass.

An array's element exists only as one of its ``n_pending`` until this step gives it a row
(``shared.jobs.arrays``). Each dispatch pass runs ``MATERIALISE`` once: for every open array
(not cancelled, indices left, tenant not suspended) it inserts the next elements from
``next_index`` up, as many as keep the array's *live* elements (materialised and not final)
within ``min(max_concurrent, window)``, and at most ``limit`` in all, then advances
``next_index``. Since an element counts as live from its insert until it is final,
``max_concurrent`` holds by construction: at most that many are queued, dispatched or
running at once. A finished element frees its place and its record's wake-up (a NOTIFY,
``shared.db.wakeup``) starts the next pass, which refills the window. The step reads the
arrays' counts (kept by the trigger of migration 0013) and never the elements, so its work
and the scheduler's memory do not grow with an array's size.

An element's row is ``shared.jobs.arrays.element_of`` in SQL (tests hold the two together):
the parent's columns, params ``parent || overrides[i] || {index_param: i}``, ``{index}`` in
the dataset names replaced by ``i``, the parent's ``created_at`` (dispatch takes an array's
elements in index order), QUEUED at once when it reads no datasets, else PENDING for
admission and stage-in. An element cancelled on its own before it was materialised already
has its (CANCELLED) row: the insert leaves it as it is.
"""

from __future__ import annotations

from shared.jobs.arrays import INDEX, element_id_sql
from shared.jobs.chunks import FIRST_CHUNK, chunk_size_sql
from shared.jobs.deps import released_array
from shared.jobs.store import ADMIT_REASON, Fetch

# The elements of array ``a`` (a ``job_arrays`` row) that have no row: the indices from
# ``next_index`` up less those that have one already (cancelled on their own), given
# ``ahead``, the count of element rows from ``next_index`` up. Pending, unless the array is
# cancelled.
VIRTUAL = "(a.size - a.next_index - ahead.n)"
AHEAD = """
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM jobs e
        WHERE e.array_id = a.job_id AND e.array_index >= a.next_index
    ) ahead
"""
# The elements of ``a`` with a row that are not final (what ``max_concurrent`` bounds).
LIVE = f"(a.n_queued + a.n_running + a.n_pending - {VIRTUAL})"

# An array run in chunks (``shared.jobs.chunks``): its elements read no datasets and write
# no outputs (``p``: its own row).
CHUNKABLE = "(p.inputs = '{}'::jsonb AND p.outputs = '{}'::jsonb)"

# $1 the window per array, $2 the most elements in all, $3 the reason of a QUEUED element,
# $4 whether chunkable arrays are left to ``MATERIALISE_CHUNKS``.
# Only arrays with room are locked (SKIP LOCKED: an array another transaction holds waits
# for the next pass; a full one is not touched, so a pass writes nothing while every window
# is full), and served each tenant's first array first, then by priority and age.
_BOUND = "least(coalesce(a.max_concurrent, $1::int), $1::int)"
MATERIALISE = f"""
WITH open AS (
    SELECT a.job_id, a.tenant_id, a.next_index, a.index_param, a.overrides,
           least(a.size - a.next_index, {_BOUND} - {LIVE}) AS room
    FROM job_arrays a
    JOIN tenants t ON t.id = a.tenant_id
    JOIN jobs p ON p.id = a.job_id
    {AHEAD}
    WHERE NOT a.cancelled AND a.next_index < a.size AND NOT t.suspended
      AND {released_array("a.job_id")}
      AND {_BOUND} > {LIVE} AND NOT ($4::bool AND {CHUNKABLE})
    FOR UPDATE OF a SKIP LOCKED
), ranked AS (
    SELECT o.*, sum(o.room) OVER (ORDER BY o.tenant_rank, o.priority DESC, o.created_at,
                                           o.job_id) AS upto
    FROM (
        SELECT open.*, p.priority, p.created_at,
               row_number() OVER (PARTITION BY open.tenant_id
                                  ORDER BY p.priority DESC, p.created_at, open.job_id)
                   AS tenant_rank
        FROM open JOIN jobs p ON p.id = open.job_id
        WHERE open.room > 0
    ) o
), taken AS (
    SELECT job_id, next_index, index_param, overrides,
           least(room, $2::int - (upto - room))::int AS n
    FROM ranked WHERE upto - room < $2::int
), advanced AS (
    UPDATE job_arrays a SET next_index = a.next_index + taken.n
    FROM taken WHERE a.job_id = taken.job_id
), inserted AS (
    INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, labels,
                      output_tier, priority, timeout_s, max_retries, checkpoint_interval_s,
                      state, state_reason, attempts, created_at, updated_at, queued_at,
                      is_array, array_id, array_index)
    SELECT {element_id_sql("p.id", "i")}, p.tenant_id, p.kernel, p.device,
           p.params || coalesce(taken.overrides -> i, '{{}}'::jsonb)
               || CASE WHEN taken.index_param IS NULL THEN '{{}}'::jsonb
                       ELSE jsonb_build_object(taken.index_param, i) END,
           replace(p.inputs::text, '{INDEX}', i::text)::jsonb,
           replace(p.outputs::text, '{INDEX}', i::text)::jsonb,
           p.labels, p.output_tier, p.priority, p.timeout_s, p.max_retries,
           p.checkpoint_interval_s,
           CASE WHEN p.inputs = '{{}}'::jsonb THEN 'QUEUED' ELSE 'PENDING' END,
           CASE WHEN p.inputs = '{{}}'::jsonb THEN $3::text END,
           0, p.created_at, now(),
           CASE WHEN p.inputs = '{{}}'::jsonb THEN now() END,
           false, p.id, i
    FROM taken
    JOIN jobs p ON p.id = taken.job_id
    CROSS JOIN LATERAL generate_series(taken.next_index, taken.next_index + taken.n - 1) AS i
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted
"""  # noqa: S608 (built from constants only)


async def materialise_elements(
    fetch: Fetch,
    *,
    window: int,
    limit: int,
    reason: str = ADMIT_REASON,
    chunked: bool = False,
) -> int:
    """Give the next elements of every open array a ``jobs`` row (see the module's doc), at
    most ``window`` live per array and ``limit`` in all; return how many rows were inserted.
    ``chunked``: leave the arrays that run in chunks to ``materialise_chunks``.
    ``fetch``: a plain asyncpg connection's ``fetch``, or ``store.session_fetch``."""
    if window <= 0 or limit <= 0:
        return 0
    rows = await fetch(MATERIALISE, window, limit, reason, chunked)
    return int(rows[0][0])


# The chunked arrays' step, as ``MATERIALISE`` but inserting ``array_chunks`` rows: the
# elements taken from each array are cut into chunks of ``chunk_size`` (the array's measured
# wall time per element, or a like array's, ``_SEED``; while it is unknown, one small chunk
# at a time: passes that come before its first flush cut no more 8-element chunks), and
# counted QUEUED
# at once (``n_pending`` to ``n_queued``, but for those that have a row already: cancelled
# on their own). A chunk's id is its first element's (``element_id``): chunks sort by index
# within their array. Chunk elements are live (``n_queued``/``n_running``), so the window and
# ``max_concurrent`` hold as for rows.
# While several tenants contend (``contending``: the tenants that have a chunk, or an open
# chunkable array with room), a chunk's target is ``$3`` times its tenant's share of their
# weights: fair share deals slots one chunk at a time, and a large chunk cut while another
# tenant had nothing waiting held its slot for much of that tenant's run; a lighter tenant's
# chunks, shorter, give their slot back sooner, so its slot time keeps to its weight. And
# an array's room, once measured, is cut into at least as many chunks as there are live
# worker slots (heartbeat within 30 s), so that a tenant has chunks for every slot its
# weight gives it.
# $1 the window per array, $2 the most elements in all, $3 the target seconds of a chunk,
# $4 the most elements of a chunk.
_SIZE = chunk_size_sql("o.wall", "($3::float8 * o.weight / (SELECT w FROM contending))", "$4::int")
# An array not measured yet takes the measure of the tenant's newest array (among its last
# ``SEED_SCAN`` jobs and arrays) of the same kernel, device and params, if one is measured:
# the same work but for the index, so it is cut at once as that one was now, instead of
# running one small chunk to measure it first (a round trip of dispatch, claim, flush and
# a pass before the rest is cut, which an array released by a dependency, or submitted
# anew, waits through). Its own first flush replaces the measure.
SEED_SCAN = 64
_SEED = f"""(SELECT b.element_wall_s
    FROM (SELECT q.id, q.kernel, q.device, q.params, q.is_array FROM jobs q
          WHERE q.tenant_id = a.tenant_id AND q.array_id IS NULL
          ORDER BY q.created_at DESC LIMIT {SEED_SCAN}) q
    JOIN job_arrays b ON b.job_id = q.id
    WHERE q.is_array AND q.id <> a.job_id AND b.element_wall_s IS NOT NULL
      AND q.kernel = p.kernel AND q.device = p.device AND q.params = p.params
      AND b.index_param IS NOT DISTINCT FROM a.index_param
      AND coalesce(b.overrides, 'null') = 'null' AND coalesce(a.overrides, 'null') = 'null'
    LIMIT 1)"""  # noqa: S608 (built from constants only)
MATERIALISE_CHUNKS = f"""
WITH open AS (
    SELECT a.job_id, a.tenant_id, a.next_index, m.wall, t.weight,
           least(a.size - a.next_index, {_BOUND} - {LIVE},
                 CASE WHEN m.wall IS NULL
                      THEN CASE WHEN {LIVE} = 0 THEN {FIRST_CHUNK} ELSE 0 END END) AS room
    FROM job_arrays a
    JOIN tenants t ON t.id = a.tenant_id
    JOIN jobs p ON p.id = a.job_id
    {AHEAD}
    CROSS JOIN LATERAL (SELECT coalesce(a.element_wall_s, {_SEED}) AS wall) m
    WHERE NOT a.cancelled AND a.next_index < a.size AND NOT t.suspended
      AND {released_array("a.job_id")}
      AND {_BOUND} > {LIVE} AND {CHUNKABLE}
    FOR UPDATE OF a SKIP LOCKED
), contending AS (
    SELECT greatest(1, sum(t.weight))::float8 AS w FROM tenants t
    WHERE t.id IN (SELECT tenant_id FROM array_chunks UNION SELECT tenant_id FROM open
                   WHERE room > 0)
), slots AS (
    SELECT greatest(1, coalesce(sum(concurrency), 0))::float8 AS n FROM workers
    WHERE NOT stopping AND heartbeat_at > now() - interval '30 seconds'
), ranked AS (
    SELECT o.*, CASE WHEN o.wall IS NULL THEN {_SIZE}
                     ELSE least({_SIZE}, ceil(o.room / (SELECT n FROM slots))::int) END AS c,
           sum(o.room) OVER (ORDER BY o.tenant_rank, o.priority DESC, o.created_at,
                                      o.job_id) AS upto
    FROM (
        SELECT open.*, p.priority, p.created_at,
               row_number() OVER (PARTITION BY open.tenant_id
                                  ORDER BY p.priority DESC, p.created_at, open.job_id)
                   AS tenant_rank
        FROM open JOIN jobs p ON p.id = open.job_id
        WHERE open.room > 0
    ) o
), taken AS (
    SELECT job_id, tenant_id, next_index, c, least(room, $2::int - (upto - room))::int AS n
    FROM ranked WHERE upto - room < $2::int
), inserted AS (
    INSERT INTO array_chunks (id, array_id, tenant_id, first_index, n, attempt)
    SELECT {element_id_sql("taken.job_id", "f")}, taken.job_id, taken.tenant_id, f,
           least(taken.c, taken.next_index + taken.n - f), 0
    FROM taken
    CROSS JOIN LATERAL generate_series(taken.next_index, taken.next_index + taken.n - 1,
                                       taken.c) AS f
    ON CONFLICT DO NOTHING
    RETURNING 1
), advanced AS (
    UPDATE job_arrays a SET next_index = a.next_index + taken.n,
        n_pending = a.n_pending - (taken.n - r.k), n_queued = a.n_queued + (taken.n - r.k)
    FROM taken
    CROSS JOIN LATERAL (
        SELECT count(*)::int AS k FROM jobs e
        WHERE e.array_id = taken.job_id AND e.array_index >= taken.next_index
          AND e.array_index < taken.next_index + taken.n
    ) r
    WHERE a.job_id = taken.job_id
)
SELECT count(*)::int FROM inserted
"""  # noqa: S608 (built from constants only)


async def materialise_chunks(
    fetch: Fetch, *, window: int, limit: int, target_s: float, chunk_max: int
) -> int:
    """The next elements of every open chunkable array as ``array_chunks`` rows (see
    ``MATERIALISE_CHUNKS``), at most ``window`` live per array and ``limit`` elements in
    all; return how many chunks were inserted."""
    if window <= 0 or limit <= 0:
        return 0
    rows = await fetch(MATERIALISE_CHUNKS, window, limit, target_s, chunk_max)
    return int(rows[0][0])
