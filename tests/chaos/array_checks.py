"""What the chaos suite checks of its arrays once the cluster is quiet, read straight from
PostgreSQL: each index of each array has exactly one element row (its id derived from the
array and the index, its params those of ``element_of``), every element final, the array's
counts (``job_arrays``) a GROUP BY of its element rows and its state the one those counts
give (``Counts.state``), and no more elements running at once than ``max_concurrent``."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.jobs.arrays import COUNT_COLUMNS, Counts, element_id, element_of
from shared.jobs.states import JobState

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@dataclass
class ArrayFindings:
    submitted: int = 0  # arrays the run submitted
    stored: int = 0  # array rows of the run's tenants
    elements: int = 0  # element rows
    not_final: list[str] = field(default_factory=list)  # arrays or elements
    indices: list[str] = field(default_factory=list)  # not one row per index 0..size-1
    elements_wrong: list[str] = field(default_factory=list)  # id or params not as derived
    counts_wrong: list[str] = field(default_factory=list)  # job_arrays != GROUP BY elements
    states_wrong: list[str] = field(default_factory=list)  # state != Counts.state()
    over_max_concurrent: list[str] = field(default_factory=list)
    # per array with max_concurrent: (the most elements running at once, max_concurrent)
    peaks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if self.stored != self.submitted:
            found.append(f"{self.stored} arrays stored for {self.submitted} submitted")
        for what, items in (
            ("not final", self.not_final),
            ("indices without exactly one element", self.indices),
            ("elements not as their array derives them", self.elements_wrong),
            ("array counts that are no GROUP BY of the elements", self.counts_wrong),
            ("array states their counts do not give", self.states_wrong),
            ("arrays over max_concurrent", self.over_max_concurrent),
        ):
            if items:
                found.append(f"arrays: {what}: {items[:5]}")
        return found

    def lines(self) -> list[str]:
        peaks = ", ".join(f"{n}/{bound}" for n, bound in self.peaks.values())
        return [
            f"arrays {self.stored} ({self.elements} element rows); most elements running at "
            f"once / max_concurrent: {peaks or 'none bounded'}"
        ]


@dataclass(frozen=True)
class ArrayRow:
    id: uuid.UUID
    state: str
    params: dict[str, Any]
    size: int
    index_param: str | None
    max_concurrent: int | None
    overrides: list[dict[str, Any]] | None
    cancelled: bool
    counts: dict[str, int]  # state -> n, as job_arrays holds them


_COUNTS = ", ".join(f"a.{COUNT_COLUMNS[s]}" for s in JobState)
_ARRAYS = text(
    f"""
    SELECT j.id, j.state, j.params, a.size, a.index_param, a.max_concurrent, a.overrides,
           a.cancelled, {_COUNTS}
    FROM jobs j JOIN job_arrays a ON a.job_id = j.id
    WHERE j.tenant_id = ANY(:t) AND j.is_array
    """  # noqa: S608 (column names of the model only)
)
_ELEMENTS = text(
    "SELECT id, array_id, array_index, state, params FROM jobs "
    "WHERE tenant_id = ANY(:t) AND array_id IS NOT NULL"
)
# The most elements of each bounded array RUNNING at once, from their rows: +1 at each
# element's start, -1 at its end, ends before starts at one instant. Elements run in chunks
# have no history (``job_events``), only their row, so the row's last attempt is what is
# counted for every element (an earlier attempt's run is not).
_PEAKS = text(
    """
    SELECT array_id, max(running) FROM (
        SELECT array_id, sum(d) OVER (PARTITION BY array_id ORDER BY t, d, id) AS running
        FROM (
            SELECT array_id, id, started_at AS t, 1 AS d FROM jobs
            WHERE array_id = ANY(:a) AND started_at IS NOT NULL AND finished_at IS NOT NULL
            UNION ALL
            SELECT array_id, id, finished_at, -1 FROM jobs
            WHERE array_id = ANY(:a) AND started_at IS NOT NULL AND finished_at IS NOT NULL
        ) e
    ) s
    GROUP BY array_id
    """
)


async def collect_arrays(
    conn: AsyncConnection, tenant_ids: Sequence[uuid.UUID], submitted: int
) -> ArrayFindings:
    f = ArrayFindings(submitted=submitted)
    arrays = {a.id: a for a in map(_array_row, (await conn.execute(_ARRAYS, {"t": tenant_ids})))}
    f.stored = len(arrays)
    elements: dict[uuid.UUID, list[tuple[Any, ...]]] = {a: [] for a in arrays}
    for row in (await conn.execute(_ELEMENTS, {"t": tenant_ids})).all():
        f.elements += 1
        elements.setdefault(row[1], []).append(tuple(row))
    for array_id, rows in elements.items():
        array = arrays.get(array_id)
        if array is None:
            f.indices.append(f"{len(rows)} elements of {array_id}, no array of the run")
            continue
        check_array(f, array, rows)
    bounded = {a.id: a.max_concurrent for a in arrays.values() if a.max_concurrent}
    peaks = await conn.execute(_PEAKS, {"a": list(bounded)})
    for array_id, peak in peaks.all():
        bound = bounded[array_id]
        f.peaks[str(array_id)] = (int(peak), bound)
        if peak > bound:
            f.over_max_concurrent.append(f"{array_id}: {peak} running, max_concurrent {bound}")
    return f


def _array_row(row: Any) -> ArrayRow:
    counts = row[8:]
    return ArrayRow(
        id=row[0],
        state=row[1],
        params=row[2],
        size=row[3],
        index_param=row[4],
        max_concurrent=row[5],
        overrides=row[6],
        cancelled=row[7],
        counts={s.value: int(n) for s, n in zip(JobState, counts, strict=True)},
    )


def check_array(f: ArrayFindings, array: ArrayRow, rows: list[tuple[Any, ...]]) -> None:
    """One array's findings from its element rows (id, array_id, array_index, state,
    params)."""
    a = array.id
    per_index = Counter(r[2] for r in rows)
    missing = sorted(set(range(array.size)) - set(per_index))
    outside = sorted(i for i in per_index if not 0 <= i < array.size)
    twice = sorted(i for i, n in per_index.items() if n > 1)
    if missing or outside or twice:
        f.indices.append(f"{a}: missing {missing[:5]}, outside {outside[:5]}, twice {twice[:5]}")
    for job_id, _, index, state, params in rows:
        if state not in FINAL:
            f.not_final.append(f"{a}:{index} {state}")
        if 0 <= index < array.size:
            check_element(f, array, job_id, index, params)
    by_state = Counter(str(r[3]) for r in rows)
    # an index without a row is pending (or cancelled with its array): none once quiet
    virtual = max(0, array.size - len(rows))
    by_state["CANCELLED" if array.cancelled else "PENDING"] += virtual
    expected = {s.value: by_state.get(s.value, 0) for s in JobState}
    if array.counts != expected:
        f.counts_wrong.append(f"{a}: counts {array.counts}, elements {expected}")
    counts = Counts(
        size=array.size,
        cancelled=array.cancelled,
        **{name: array.counts[s.value] for s, name in _COUNTS_FIELDS.items()},
    )
    if counts.state().value != array.state:
        f.states_wrong.append(f"{a}: {array.state}, counts give {counts.state().value}")
    if array.state not in FINAL:
        f.not_final.append(f"{a} (array) {array.state}")


# ``Counts``' field of each state.
_COUNTS_FIELDS = {
    JobState.PENDING: "pending",
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled_n",
    JobState.TIMED_OUT: "timed_out",
}


def check_element(
    f: ArrayFindings, array: ArrayRow, job_id: uuid.UUID, index: int, params: Mapping[str, Any]
) -> None:
    if job_id != element_id(array.id, index):
        f.elements_wrong.append(f"{array.id}:{index} has the id {job_id}")
    want = element_of(
        params=array.params,
        inputs={},
        outputs={},
        index=index,
        index_param=array.index_param,
        overrides=array.overrides,
    ).params
    if dict(params) != want:
        f.elements_wrong.append(f"{array.id}:{index} ran {params}, not {want}")
