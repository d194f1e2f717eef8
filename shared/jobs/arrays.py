"""Job arrays: the ids of elements, and the rules of an array's counts and state.

An array is one ``jobs`` row (``is_array``) with a ``job_arrays`` row: its settings and its
elements' counts by state. An element becomes a ``jobs`` row of its own only when the
scheduler is about to run it (as Slurm splits a task out of its array only when it is
scheduled); until then it exists only as one of ``n_pending``. A statement-level trigger on
``jobs`` (migration 0013, ``stratus_array_counts``) adds every statement's state changes of
elements to their arrays' counts and sets the array's own state from them, whichever code
path wrote the state: reading an array's counts is one row, never a count of its elements.

An element's public id is ``"{array_id}:{index}"``; its row's id is derived from both
(``element_id``), so the scheduler can materialise an element twice without a second row
and any route can find it without a lookup.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.jobs.states import JobState

# The count column of each element state, in ``job_arrays``.
COUNT_COLUMNS: dict[JobState, str] = {
    JobState.PENDING: "n_pending",
    JobState.QUEUED: "n_queued",
    JobState.RUNNING: "n_running",
    JobState.SUCCEEDED: "n_succeeded",
    JobState.FAILED: "n_failed",
    JobState.CANCELLED: "n_cancelled",
    JobState.TIMED_OUT: "n_timed_out",
}


def element_id(array_id: uuid.UUID, index: int) -> uuid.UUID:
    """The ``jobs.id`` of element ``index`` of ``array_id``: the array id's first 80 bits and
    the index in the last 48. SQL: ``element_id_sql``."""
    if not 0 <= index < 1 << 48:
        raise ValueError(f"array index out of range: {index}")
    return uuid.UUID(hex=array_id.hex[:20] + f"{index:012x}")


# The last 48 bits of an array's own id: no index reaches it (``size`` is far below 2**48 - 1),
# so no element's id is its array's.
_ARRAY_TAIL = "f" * 12


def new_array_id() -> uuid.UUID:
    """A fresh id for an array: random but for its last 48 bits (``_ARRAY_TAIL``)."""
    return uuid.UUID(hex=uuid.uuid4().hex[:20] + _ARRAY_TAIL)


def element_id_sql(array_id: str, index: str) -> str:
    """SQL for ``element_id`` of the uuid expression ``array_id`` and the integer ``index``."""
    return f"(left(replace({array_id}::text, '-', ''), 20) || lpad(to_hex({index}), 12, '0'))::uuid"


def public_id(array_id: uuid.UUID, index: int) -> str:
    """An element's id as the API shows it."""
    return f"{array_id}:{index}"


# The placeholder of a dataset name that each element replaces by its index.
INDEX = "{index}"


@dataclass(frozen=True)
class Element:
    """What element ``index`` of an array runs: the parent's templates filled in."""

    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]


def element_of(
    *,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    index: int,
    index_param: str | None,
    overrides: Sequence[Mapping[str, Any]] | None,
) -> Element:
    """Element ``index`` of an array with these templates: ``params``, then ``overrides[index]``
    (when there is one) merged over them at the top level, then ``index_param`` set to the
    index; ``{index}`` in each dataset name replaced by the index. The scheduler's
    materialisation does the same in SQL (jsonb ``||``, ``replace``): tests hold it to this."""
    merged = dict(params)
    if overrides is not None and index < len(overrides):
        merged.update(overrides[index])
    if index_param is not None:
        merged[index_param] = index
    text = str(index)
    return Element(
        params=merged,
        inputs={k: v.replace(INDEX, text) for k, v in inputs.items()},
        outputs={k: v.replace(INDEX, text) for k, v in outputs.items()},
    )


@dataclass(frozen=True)
class JobRef:
    """A job id as a route received it: a job or an array (``index`` None), or an element."""

    id: uuid.UUID
    index: int | None = None


def parse_job_ref(text: str) -> JobRef | None:
    """``"<uuid>"`` or ``"<uuid>:<index>"``; None for anything else (the route answers 404)."""
    head, colon, tail = text.partition(":")
    try:
        job_id = uuid.UUID(head)
    except ValueError:
        return None
    if not colon:
        return JobRef(job_id)
    if not tail.isascii() or not tail.isdigit() or len(tail) > 9:
        return None
    return JobRef(job_id, int(tail))


@dataclass(frozen=True)
class Counts:
    """An array's elements by state (``job_arrays``' ``n_*``)."""

    size: int
    cancelled: bool
    pending: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled_n: int = 0
    timed_out: int = 0

    def by_state(self) -> dict[str, int]:
        return {
            "PENDING": self.pending,
            "QUEUED": self.queued,
            "RUNNING": self.running,
            "SUCCEEDED": self.succeeded,
            "FAILED": self.failed,
            "CANCELLED": self.cancelled_n,
            "TIMED_OUT": self.timed_out,
        }

    def state(self) -> JobState:
        """The array's state, as the database's ``stratus_array_refresh`` derives it:
        PENDING while every element is pending, RUNNING while any is not final, then
        SUCCEEDED when all succeeded, CANCELLED when the array was cancelled, else FAILED."""
        if self.pending == self.size:
            return JobState.PENDING
        if self.pending + self.queued + self.running > 0:
            return JobState.RUNNING
        if self.succeeded == self.size:
            return JobState.SUCCEEDED
        return JobState.CANCELLED if self.cancelled else JobState.FAILED
