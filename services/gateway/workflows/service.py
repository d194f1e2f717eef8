"""Workflow use cases. A workflow is created in one transaction on a plain asyncpg connection:
its row (idempotent by ``(tenant_id, idempotency_key)``), every step's job or array row by
the submission's own statements (the tenant's queue quota included), the steps' edges
(``shared.jobs.deps``). Reads and the cancel take ``session`` as a keyword and never
commit. A workflow's state is read from its steps' rows, as an array's from its elements'."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs import admission, arrays, cancel
from services.gateway.jobs.service import SubmitDb, _checked_params, _new_job
from services.gateway.jobs.writer import NewJob
from services.gateway.webhooks.service import check_notify
from services.gateway.workflows import graph
from services.gateway.workflows.depends import check_rooms, insert_row, lock_tenant
from services.gateway.workflows.schemas import WorkflowOut, WorkflowStep, WorkflowSubmit
from shared.db.models import Job, Workflow
from shared.errors import Conflict, Invalid, NotFound
from shared.events import utcnow
from shared.idempotency import check_replay, request_hash
from shared.jobs import deps
from shared.jobs.arrays import new_array_id
from shared.jobs.states import FINAL, JobState
from shared.kernels import get_spec
from shared.pagination import PageQuery, newest_first
from shared.settings import WebhookSettings

FINAL_NAMES = frozenset(s.value for s in FINAL)


@dataclass(frozen=True)
class Rules:
    """What the gateway's settings and the caller's quotas say about a step (as for
    ``POST /v1/jobs``)."""

    default_timeout_s: int
    default_max_retries: int
    idempotency_window_s: int
    max_queued_jobs: int
    limits: admission.Limits
    tiers: Collection[str]
    array_max_size: int
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)


@dataclass(frozen=True)
class Created:
    workflow: WorkflowOut
    replayed: bool


def workflow_state(states: Sequence[str], cancelled: bool) -> str:
    """PENDING until a step is queued, RUNNING while one is not final, then SUCCEEDED if
    every step succeeded, CANCELLED if the workflow was cancelled, else FAILED."""
    if all(s == "PENDING" for s in states):
        return "PENDING"
    if any(s not in FINAL_NAMES for s in states):
        return "RUNNING"
    if all(s == "SUCCEEDED" for s in states):
        return "SUCCEEDED"
    return "CANCELLED" if cancelled else "FAILED"


_FIELDS = ("id", "name", "steps", "cancelled", "created_at")


def fields_of(w: Any) -> dict[str, Any]:
    """A workflow's row, an ORM ``Workflow`` or a record of ``_FIELDS``, as a dict."""
    if isinstance(w, Workflow):
        return {k: getattr(w, k) for k in _FIELDS}
    return {k: w[k] for k in _FIELDS}


def workflow_out(w: Any, steps: Iterable[tuple[str, datetime | None]]) -> WorkflowOut:
    """``w``: a workflow's row (``fields_of``); ``steps``: each step's (state, finished_at)."""
    row = fields_of(w)
    steps = list(steps)
    states = [s for s, _ in steps]
    state = workflow_state(states, row["cancelled"])
    ends = [f for _, f in steps if f is not None]
    counts = {s.value: 0 for s in JobState}
    for s in states:
        counts[s] += 1
    named = row["steps"]
    return WorkflowOut(
        id=row["id"],
        name=row["name"],
        state=state,
        steps=orjson.loads(named) if isinstance(named, str) else named,
        counts=counts,
        created_at=row["created_at"],
        finished_at=max(ends) if state in FINAL_NAMES and ends else None,
    )


def _in_step(exc: Invalid, name: str) -> Invalid:
    """``exc`` with each error's ``loc`` under the step's: ``["body", "steps", name, ...]``."""
    for e in exc.errors:
        loc = list(e.get("loc", ["body"]))
        e["loc"] = ["body", "steps", name, *loc[1:]]
    return exc


async def _prepare(
    db: SubmitDb, tenant_id: uuid.UUID, name: str, step: WorkflowStep, rules: Rules
) -> arrays.ArrayPlan | None:
    """The checks of ``POST /v1/jobs`` on one step; its array's plan (None: a job)."""
    try:
        spec = get_spec(step.kernel)
        params = _checked_params(step, spec, rules.tiers)
        await check_notify(db=db, tenant_id=tenant_id, notify=step.notify, settings=rules.webhooks)
        if step.array is None:
            await admission.admit(
                db=db, tenant_id=tenant_id, data=step, spec=spec, params=params, limits=rules.limits
            )
            return None
        plan = arrays.check_array(step, spec, max_size=rules.array_max_size)
        await admission.admit_array(
            db=db, tenant_id=tenant_id, data=step, spec=spec, plan=plan, limits=rules.limits
        )
        return plan
    except Invalid as exc:
        raise _in_step(exc, name) from None


def _row(
    tenant_id: uuid.UUID,
    step: WorkflowStep,
    job_id: uuid.UUID,
    ids: Mapping[str, uuid.UUID],
    rules: Rules,
) -> NewJob:
    """The step's job row, its ``depends_on`` stored with the steps' job ids."""
    spec = get_spec(step.kernel)
    params = dict(step.params) if step.array is not None else spec.validate_params(step.params)
    resolved = [
        {"job": str(ids[d["step"]]) if "step" in d else d["job"], "condition": d["condition"]}
        for d in step.depends_on or ()
    ]
    job = _new_job(
        tenant_id=tenant_id,
        data=step,
        max_queued=rules.max_queued_jobs,
        kernel=spec.name,
        params=params,
        timeout_s=step.timeout_s or rules.default_timeout_s,
        max_retries=rules.default_max_retries if step.max_retries is None else step.max_retries,
        idempotency_key=None,
        request_hash=None,
        job_id=job_id,
        depends_on=resolved or None,
        notify=None if step.notify is None else step.notify.model_dump(),
    )
    if step.array is not None:
        job.row["is_array"] = True
    return job


async def _targets(
    conn: Any,
    tenant_id: uuid.UUID,
    name: str,
    step: WorkflowStep,
    ids: Mapping[str, uuid.UUID],
    sizes: Mapping[str, int | None],
) -> list[deps.Target]:
    """The step's dependencies: other steps (new rows, PENDING) and jobs submitted before
    (locked, 422 for one that is no job of the tenant's)."""
    given = list(step.depends_on or ())
    outside = [i for i, d in enumerate(given) if "job" in d]
    try:
        found = await deps.lock_targets(
            conn, tenant_id=tenant_id, refs=[given[i]["job"] for i in outside]
        )
    except Invalid as exc:
        for e in exc.errors:  # the index among the step's dependencies
            e["loc"][2] = outside[e["loc"][2]]
        raise _in_step(exc, name) from None
    by_index = dict(zip(outside, found, strict=True))
    return [
        by_index[i]
        if i in by_index
        else deps.Target(ids[d["step"]], "PENDING", size=sizes[d["step"]])
        for i, d in enumerate(given)
    ]


def _step_target(
    ids: Mapping[str, uuid.UUID], sizes: Mapping[str, int | None], name: str
) -> deps.Target:
    """Another step of the workflow: a row inserted in this transaction, PENDING."""
    return deps.Target(ids[name], "PENDING", size=sizes[name])


_INSERT = """
INSERT INTO workflows (id, tenant_id, name, steps, idempotency_key, request_hash)
VALUES ($1, $2, $3, CAST($4::text AS jsonb), $5, $6)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING id, name, steps::text AS steps, cancelled, created_at
"""
_JOIN = "UPDATE jobs SET workflow_id = $1 WHERE id = ANY($2::uuid[])"
_STEPS = "SELECT state, finished_at FROM jobs WHERE workflow_id = $1"


async def create_workflow(
    *,
    db: SubmitDb,
    tenant_id: uuid.UUID,
    data: WorkflowSubmit,
    idempotency_key: str | None,
    rules: Rules,
) -> Created:
    """Check the graph and every step, answer a replay, then write it all in one
    transaction (nothing of it when any part fails)."""
    graph.check_refs(data.steps)
    names = graph.order(data.steps)
    plans = {name: await _prepare(db, tenant_id, name, data.steps[name], rules) for name in names}
    fingerprint = None if idempotency_key is None else request_hash(data)
    if idempotency_key is not None and fingerprint is not None:
        found = await _replay(db, tenant_id, idempotency_key, fingerprint, rules)
        if found is not None:
            return Created(found, replayed=True)
    ids = {n: new_array_id() if plans[n] is not None else uuid.uuid4() for n in names}
    sizes = {n: None if (p := plans[n]) is None else p.array.size for n in names}
    steps_json = orjson.dumps({n: str(ids[n]) for n in names}).decode()
    async with db.raw() as conn, conn.transaction():
        await lock_tenant(conn, tenant_id, rules.max_queued_jobs)
        w = await conn.fetchrow(
            _INSERT, uuid.uuid4(), tenant_id, data.name, steps_json, idempotency_key, fingerprint
        )
        if w is not None:
            edges: list[deps.Edge] = []
            jobs: list[NewJob] = []
            for name in names:
                step, plan = data.steps[name], plans[name]
                targets = await _targets(conn, tenant_id, name, step, ids, sizes)
                conditions = [d["condition"] for d in step.depends_on or ()]
                try:
                    deps.check_conditions(
                        conditions,
                        targets,
                        size=sizes[name],
                        max_concurrent=None if plan is None else plan.array.max_concurrent,
                    )
                except Invalid as exc:
                    raise _in_step(exc, name) from None
                job = _row(tenant_id, step, ids[name], ids, rules)
                jobs.append(job)
                # counted below, once the edges are settled
                await insert_row(conn, replace(job, max_queued=None), plan.array if plan else None)
                edges += [
                    deps.Edge(ids[name], t, c) for t, c in zip(targets, conditions, strict=True)
                ]
            await conn.execute(_JOIN, w["id"], list(ids.values()))
            await deps.attach(conn, edges)
            await check_rooms(conn, jobs[0], [j.id for j in jobs])
            steps = [(r["state"], r["finished_at"]) for r in await conn.fetch(_STEPS, w["id"])]
    if w is None:  # a concurrent request with the same key won the race
        assert idempotency_key is not None
        assert fingerprint is not None
        found = await _replay(db, tenant_id, idempotency_key, fingerprint, rules)
        if found is None:
            raise Conflict("a request with this Idempotency-Key is in progress; retry")
        return Created(found, replayed=True)
    return Created(workflow_out(w, steps), replayed=False)


_BY_KEY = """
SELECT id, name, steps::text AS steps, cancelled, created_at, request_hash FROM workflows
WHERE tenant_id = $1 AND idempotency_key = $2
"""
_RELEASE_KEY = "UPDATE workflows SET idempotency_key = NULL WHERE id = $1"


async def _replay(
    db: SubmitDb, tenant_id: uuid.UUID, key: str, fingerprint: str, rules: Rules
) -> WorkflowOut | None:
    """The workflow ``key`` names within its window (422 for another body), or None."""
    async with db.raw() as conn:
        w = await conn.fetchrow(_BY_KEY, tenant_id, key)
        if w is None:
            return None
        if w["created_at"] < utcnow() - timedelta(seconds=rules.idempotency_window_s):
            await conn.execute(_RELEASE_KEY, w["id"])  # expired: this request creates anew
            return None
        steps = [(r["state"], r["finished_at"]) for r in await conn.fetch(_STEPS, w["id"])]
    check_replay(stored=w["request_hash"], given=fingerprint)
    return workflow_out(w, steps)


def _parse(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound("workflow not found") from None


async def _steps(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, datetime | None]]]:
    rows = await session.execute(
        select(Job.workflow_id, Job.state, Job.finished_at).where(Job.workflow_id.in_(ids))
    )
    found: dict[uuid.UUID, list[tuple[str, datetime | None]]] = {i: [] for i in ids}
    for wid, state, finished_at in rows:
        if wid is not None:
            found[wid].append((state, finished_at))
    return found


async def get_workflow(
    *, session: AsyncSession, tenant_id: uuid.UUID, workflow_id: str
) -> WorkflowOut:
    wid = _parse(workflow_id)
    w = await session.scalar(
        select(Workflow).where(Workflow.id == wid, Workflow.tenant_id == tenant_id)
    )
    if w is None:
        raise NotFound("workflow not found")
    return workflow_out(w, (await _steps(session, [wid]))[wid])


async def list_workflows(
    *, session: AsyncSession, tenant_id: uuid.UUID, page: PageQuery
) -> tuple[list[WorkflowOut], str | None]:
    """A page of the tenant's workflows, newest first."""
    rows, next_cursor = await newest_first(
        session,
        select(Workflow).where(Workflow.tenant_id == tenant_id),
        created=Workflow.created_at,
        key=Workflow.id,
        page=page,
    )
    steps = await _steps(session, [w.id for w in rows])
    return [workflow_out(w, steps[w.id]) for w in rows], next_cursor


async def cancel_workflow(
    *, session: AsyncSession, tenant_id: uuid.UUID, workflow_id: str
) -> WorkflowOut:
    """Cancel every step that is not final (a running one is stopped); 409 when the
    workflow is final already."""
    wid = _parse(workflow_id)
    w = await session.scalar(
        select(Workflow)
        .where(Workflow.id == wid, Workflow.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if w is None:
        raise NotFound("workflow not found")
    before = (await _steps(session, [wid]))[wid]
    if workflow_state([s for s, _ in before], w.cancelled) in FINAL_NAMES:
        raise Conflict("the workflow is final already")
    w.cancelled = True
    for job_id in w.steps.values():
        # read anew: cancelling a step may have cancelled the steps that wait on it
        state = await session.scalar(select(Job.state).where(Job.id == uuid.UUID(job_id)))
        if state is not None and state not in FINAL_NAMES:
            await cancel.cancel(session=session, tenant_id=tenant_id, text_id=job_id)
    await session.flush()
    return workflow_out(w, (await _steps(session, [wid]))[wid])
