"""Job dependencies: what a submission with ``depends_on`` writes, in its own transaction.

A job waits on each dependency that is not settled through one ``job_deps`` edge, and
``jobs.deps_left`` counts its edges: the one predicate "has unmet dependencies" is
``deps_left > 0``, which admission (``store.admit_pending``) and the materialisation of an
array's elements both check on the job's (the array's) row. The release is the database's
(migration 0022): when a job becomes final, a statement-level trigger on ``jobs`` runs
``stratus_deps_resolve`` over every job the statement made final, which deletes their edges
(a DELETE, so each edge is settled once whatever runs concurrently), lowers the dependents'
``deps_left`` and cancels those whose condition can no longer hold, in the transaction that
made the dependency final: a fan-out or a fan-in of any size is one statement's work, and a
crash before the commit releases nothing. A cancel updates ``jobs`` again, so the trigger
carries it on to the dependents' dependents.

The race with a submission: ``attach`` runs in the submission's transaction after
``lock_targets`` has locked the dependencies (``FOR SHARE``): a dependency that became final
before is seen final (and settled here by the same ``stratus_deps_resolve``); one that
becomes final after waits for the submission to commit, and its trigger then sees the edge.
An element's state changes all lock its array's ``job_arrays`` row (the counts' trigger),
so for an element (with a row or not) that row is the one locked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from shared.errors import Invalid
from shared.jobs.arrays import element_id, parse_job_ref
from shared.jobs.states import FINAL, JobState

Condition = Literal["afterok", "afternotok", "afterany", "aftercorr"]
WAITING = "dependency"  # the state_reason of a job that waits on its dependencies
NEVER = "dependency_never_satisfied"  # ... of one cancelled because one cannot hold
MAX_DEPENDENCIES = 1000
# the state of an element without a row whose array was cancelled and is final
VIRTUAL = "CANCELLED_WITH_ARRAY"


@with_config(ConfigDict(extra="forbid"))
class Dependency(TypedDict):
    """``{"job": "<id | array_id | array_id:index>", "condition": ...}``."""

    job: Annotated[str, Field(min_length=1, max_length=64)]
    condition: Condition


@dataclass(frozen=True)
class Target:
    """A dependency as the submission found it, locked: ``dep_id`` is the job's, array's
    or element's id; ``array`` the element's array (None otherwise); ``size`` an array's."""

    dep_id: uuid.UUID
    state: str
    array: uuid.UUID | None = None
    size: int | None = None

    @property
    def final(self) -> bool:
        """Settled already: final, or an element without a row of a final (cancelled) array."""
        return self.state == VIRTUAL or JobState(self.state) in FINAL

    @property
    def settled_by(self) -> uuid.UUID:
        """What ``stratus_deps_resolve`` is given for it once final: an element without a row
        was cancelled with its array."""
        return self.array if self.array is not None and self.state == VIRTUAL else self.dep_id


@dataclass(frozen=True)
class Edge:
    job_id: uuid.UUID
    target: Target
    condition: str


_LOCK_ARRAYS = """
SELECT a.job_id, a.size, a.cancelled, j.state FROM job_arrays a JOIN jobs j ON j.id = a.job_id
WHERE a.tenant_id = $1 AND a.job_id = ANY($2::uuid[]) ORDER BY a.job_id FOR SHARE OF a
"""
_LOCK_JOBS = """
SELECT id, state, is_array FROM jobs
WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND array_id IS NULL ORDER BY id FOR SHARE
"""
_ELEMENTS = "SELECT id, state FROM jobs WHERE id = ANY($1::uuid[])"


def _loc(prefix: Sequence[Any], i: int, field: str) -> list[Any]:
    return [*prefix, "depends_on", i, field]


async def lock_targets(
    conn: Any, *, tenant_id: uuid.UUID, refs: Sequence[str], loc: Sequence[Any] = ("body",)
) -> list[Target]:
    """Each of ``refs`` (a job's, an array's or an element's id) as the tenant's dependency,
    locked until the transaction ends; 422 naming every ref that is no job of the tenant's
    (another tenant's included: existence is not leaked) or that is named twice."""
    parsed = [parse_job_ref(r) for r in refs]
    heads = sorted({p.id for p in parsed if p is not None})
    arrays = {r["job_id"]: r for r in await conn.fetch(_LOCK_ARRAYS, tenant_id, heads)}
    jobs = {r["id"]: r for r in await conn.fetch(_LOCK_JOBS, tenant_id, heads)}
    element_ids = [
        element_id(p.id, p.index)
        for p in parsed
        if p is not None
        and p.index is not None
        and p.id in arrays
        and p.index < arrays[p.id]["size"]
    ]
    rows = {r["id"]: r["state"] for r in await conn.fetch(_ELEMENTS, element_ids)}
    targets: list[Target] = []
    errors: list[dict[str, Any]] = []
    seen: set[uuid.UUID] = set()
    for i, (ref, p) in enumerate(zip(refs, parsed, strict=True)):
        target = None if p is None else _target(p.id, p.index, arrays, jobs, rows)
        if target is None:
            errors.append({"loc": _loc(loc, i, "job"), "msg": f"no such job: {ref!r}"})
            continue
        if target.dep_id in seen:
            errors.append({"loc": _loc(loc, i, "job"), "msg": "a dependency named twice"})
        seen.add(target.dep_id)
        targets.append(target)
    if errors:
        raise Invalid("depends_on names jobs that cannot be waited on", errors=errors)
    return targets


def _target(
    head: uuid.UUID,
    index: int | None,
    arrays: dict[uuid.UUID, Any],
    jobs: dict[uuid.UUID, Any],
    rows: dict[uuid.UUID, str],
) -> Target | None:
    array = arrays.get(head)
    if index is None:
        job = jobs.get(head)
        if job is None:
            return None
        return Target(head, job["state"], size=None if array is None else array["size"])
    if array is None or index >= array["size"]:
        return None
    eid = element_id(head, index)
    if eid in rows:
        return Target(eid, rows[eid], array=head)
    # no row: pending, or cancelled with its array (settled once the array is final)
    if array["cancelled"]:
        state = VIRTUAL if JobState(array["state"]) in FINAL else "PENDING"
        return Target(eid, state, array=head)
    return Target(eid, "PENDING", array=head)


def check_conditions(
    conditions: Sequence[str],
    targets: Sequence[Target],
    *,
    size: int | None,
    max_concurrent: int | None = None,
    loc: Sequence[Any] = ("body",),
) -> None:
    """422 for a condition that does not fit its dependency: ``aftercorr`` joins an array
    (``size``: the dependent's size, None for a job) to an array (not an element) of the same
    size, as the array's only dependency and without ``max_concurrent`` (its elements start
    as the other array's end, not in a window)."""
    errors: list[dict[str, Any]] = []
    for i, (condition, target) in enumerate(zip(conditions, targets, strict=True)):
        if condition != "aftercorr":
            continue
        if size is None or target.size is None or target.array is not None:
            msg = "aftercorr joins an array to an array"
        elif size != target.size:
            msg = f"aftercorr needs arrays of one size ({size} and {target.size})"
        elif len(conditions) > 1:
            msg = "aftercorr must be the array's only dependency"
        elif max_concurrent is not None:
            msg = "aftercorr cannot be combined with max_concurrent"
        else:
            continue
        errors.append({"loc": _loc(loc, i, "condition"), "msg": msg})
    if errors:
        raise Invalid("a dependency's condition does not fit it", errors=errors)


_DEPS_LEFT = """
UPDATE jobs j SET deps_left = c.n
FROM (SELECT job_id, count(*)::int AS n FROM unnest($1::uuid[]) AS e(job_id) GROUP BY job_id) c
WHERE j.id = c.job_id
"""
_EDGES = """
INSERT INTO job_deps (job_id, dep_id, dep_array, condition)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[])
"""
_RESOLVE = "SELECT stratus_deps_resolve($1::uuid[])"
_ENDED_ELEMENTS = f"""
SELECT id FROM jobs WHERE array_id = ANY($1::uuid[])
  AND state IN ({", ".join(f"'{s.value}'" for s in sorted(FINAL, key=lambda s: s.value))})
"""  # noqa: S608 (the final states only)


async def attach(conn: Any, edges: Sequence[Edge]) -> None:
    """Give the just inserted dependents their edges and ``deps_left``, then settle at once
    the edges whose dependency is final already (the trigger's own function), all in the
    caller's transaction, under ``lock_targets``' locks."""
    if not edges:
        return
    jobs = [e.job_id for e in edges]
    await conn.execute(_DEPS_LEFT, jobs)
    await conn.execute(
        _EDGES,
        jobs,
        [e.target.dep_id for e in edges],
        [e.target.array for e in edges],
        [e.condition for e in edges],
    )
    settled = {e.target.settled_by for e in edges if e.target.final}
    corr = [e.target.dep_id for e in edges if e.condition == "aftercorr"]
    if corr:  # the elements that ended already give their counterparts rows now
        settled.update(r["id"] for r in await conn.fetch(_ENDED_ELEMENTS, corr))
    if settled:
        await conn.execute(_RESOLVE, sorted(settled))


def released(job: str) -> str:
    """SQL: the ``jobs`` row ``job`` has no dependency left to wait on (the one predicate
    admission, demand and materialisation share)."""
    return f"{job}.deps_left = 0"


def released_array(array_id: str) -> str:
    """SQL: the array whose id is ``array_id`` (a ``job_arrays.job_id``) has no dependency
    left to wait on: its elements may be materialised."""
    return f"EXISTS (SELECT 1 FROM jobs w WHERE w.id = {array_id} AND {released('w')})"  # noqa: S608
