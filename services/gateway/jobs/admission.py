"""What a submission is checked against beyond its schema and its kernel's params, before
anything is stored: output names, a worker pool that can run its device, its input datasets
(each ``.npy`` header read from its tier and held to the kernel's shape rules), and the
footprint those headers predict against the per-job memory limit (422) and what is left of
the tenant's ``storage_bytes`` quota (413). The worker enforces the same limits at run time;
these checks turn a job that cannot succeed into an answer at once."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import Text, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs.arrays import MAX_ERRORS, ArrayPlan, Sample, at_element
from services.gateway.jobs.schemas import CHECKSUM_PATTERN, JobSubmit
from shared.db.models import Dataset
from shared.errors import Invalid, QuotaExceeded
from shared.jobs.arrays import INDEX
from shared.jobs.pools import WORKER_TTL_S
from shared.kernels import Footprint, Headers, KernelSpec
from shared.npy import FIRST_READ, ArrayHeader, NpyError, header_end, parse_header
from shared.storage import Storage, object_key
from shared.storage.catalog import lock_name
from shared.storage.quota import replaced_bytes, replaced_bytes_of, storage_used

T = TypeVar("T")


class AdmissionDb(Protocol):
    def raw(self) -> AbstractAsyncContextManager[Any]: ...

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...


@dataclass(frozen=True)
class Limits:
    """What the checks hold a submission to, besides its kernel."""

    storage: Storage
    job_memory_bytes: int
    storage_quota: int
    pools: ClosedPools


async def admit(
    *,
    db: AdmissionDb,
    tenant_id: uuid.UUID,
    data: JobSubmit,
    spec: KernelSpec,
    params: Mapping[str, Any],
    limits: Limits,
) -> None:
    """Raise ``Invalid`` (422) or ``QuotaExceeded`` (413) for a job that cannot succeed."""
    check_pin_format(data.pins)
    _check_distinct_outputs(data.outputs)
    await _check_device(db=db, device=data.device, spec=spec, pools=limits.pools)
    if not data.inputs and not data.outputs:
        return
    async with db.session() as session:
        # Under the inputs' locks no upload or delete changes a file between its row and
        # its header (a short read would count against the tier's breaker).
        for name in sorted(set(data.inputs.values())):
            await lock_name(session=session, tenant_id=tenant_id, name=name)
        found = await _datasets(session=session, tenant_id=tenant_id, data=data)
        if not data.depends_on:
            _check_inputs_exist(data.inputs, found)
            _check_pins(data.inputs, data.pins or {}, found)
        elif not set(data.inputs.values()) <= set(found):
            # A job that waits may read what its dependencies will write: its inputs are
            # checked when it is admitted (stage-in) and by the worker, not now.
            return
        headers = await _read_headers(
            storage=limits.storage, tenant_id=tenant_id, inputs=data.inputs, found=found
        )
        used = await storage_used(session=session, tenant_id=tenant_id) if data.outputs else 0
        for name in set(data.outputs.values()):
            used -= await replaced_bytes(session=session, tenant_id=tenant_id, name=name)
    verdict = spec.check_inputs(headers, params)
    if verdict.problems:
        _refuse_inputs(spec, verdict.problems)
    if verdict.footprint is not None:
        _check_memory(verdict.footprint, limits.job_memory_bytes)
        _check_storage(verdict.footprint, data.outputs, limits.storage_quota - used)


async def admit_array(
    *,
    db: AdmissionDb,
    tenant_id: uuid.UUID,
    data: JobSubmit,
    spec: KernelSpec,
    plan: ArrayPlan,
    limits: Limits,
) -> None:
    """``admit`` for an array: every element's inputs exist (one query for all their names);
    the headers, shape rules and footprint are checked on the first and the last element's
    inputs only (the worker checks each element's when it runs), and the storage quota
    against the outputs of the larger of the two times the size."""
    _check_distinct_outputs(data.outputs)
    if data.pins:
        raise Invalid(
            "an array's inputs cannot be pinned yet",
            errors=[
                {"loc": ["body", "inputs", n, "checksum"], "msg": "not supported on an array"}
                for n in sorted(data.pins)
            ],
        )
    await _check_device(db=db, device=data.device, spec=spec, pools=limits.pools)
    if not data.inputs and not data.outputs:
        return
    headers: dict[int, dict[str, ArrayHeader]] = {}
    async with db.session() as session:
        for name in sorted({n for e in plan.samples for n in e.inputs.values()}):
            await lock_name(session=session, tenant_id=tenant_id, name=name)
        names = _every_name(data.inputs, plan.size)
        found = await _datasets_named(session=session, tenant_id=tenant_id, names=names)
        if data.depends_on and not set(names) <= set(found):
            return  # its dependencies may write what is missing (as ``admit`` says)
        _check_every_input(data.inputs, plan.size, found)
        for e in plan.samples:
            read = _read_headers(
                storage=limits.storage, tenant_id=tenant_id, inputs=e.inputs, found=found
            )
            headers[e.index] = await _element(e.index, read)
        used = 0
        if data.outputs:
            outputs = _every_name(data.outputs, plan.size)
            used = await storage_used(session=session, tenant_id=tenant_id)
            used -= await replaced_bytes_of(session=session, tenant_id=tenant_id, names=outputs)
    each = 0
    for e in plan.samples:
        each = max(each, _check_element(spec, e, headers[e.index], limits.job_memory_bytes))
    _check_array_storage(each, plan.size, limits.storage_quota - used)


def _every_name(templates: Mapping[str, str], size: int) -> list[str]:
    names = {t for t in templates.values() if INDEX not in t}
    for t in templates.values():
        if INDEX in t:
            names.update(t.replace(INDEX, str(i)) for i in range(size))
    return sorted(names)


def _check_every_input(inputs: Mapping[str, str], size: int, found: Mapping[str, Stored]) -> None:
    """422 naming the first missing inputs: ``["body", "inputs", n]`` for an input every
    element shares, ``["body", "array", "elements", i, "inputs", n]`` for element i's own."""
    shared = {n: t for n, t in inputs.items() if INDEX not in t}
    _check_inputs_exist(shared, found)
    own = sorted((n, t) for n, t in inputs.items() if INDEX in t)
    named = ((i, n, t.replace(INDEX, str(i))) for i in range(size) for n, t in own)
    missing = [(i, n, name) for i, n, name in named if name not in found]
    if not missing:
        return
    errors = [
        {"loc": ["body", "array", "elements", i, "inputs", n], "msg": f"dataset {name!r} not found"}
        for i, n, name in missing[:MAX_ERRORS]
    ]
    i, n, name = missing[0]
    raise Invalid(
        f"{len(missing)} input datasets of the array not found, the first element {i}'s "
        f"input {n!r} ({name!r})",
        errors=errors,
    )


async def _element(i: int, check: Awaitable[T]) -> T:
    """``check`` of element ``i``: a refusal names the element."""
    try:
        return await check
    except Invalid as exc:
        raise at_element(exc, i) from None


def _check_element(spec: KernelSpec, e: Sample, headers: Headers, memory_limit: int) -> int:
    """Element ``e``'s inputs against the kernel's rules and its footprint against the memory
    limit; what its outputs will store."""
    try:
        verdict = spec.check_inputs(headers, e.params)
        if verdict.problems:
            _refuse_inputs(spec, verdict.problems)
        if verdict.footprint is None:
            return 0
        _check_memory(verdict.footprint, memory_limit)
    except Invalid as exc:
        raise at_element(exc, e.index) from None
    return verdict.footprint.output_bytes


def _check_array_storage(each: int, size: int, left: int) -> None:
    if each * size <= left:
        return
    raise QuotaExceeded(
        f"the array's outputs are predicted to store {each * size} bytes ({size} elements of "
        f"{each} bytes), over the {max(left, 0)} bytes left of the storage_bytes quota"
    )


def _check_distinct_outputs(outputs: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    errors = []
    for output, name in outputs.items():
        if name in seen:
            msg = f"dataset {name!r} is also output {seen[name]!r}: each output needs its own"
            errors.append({"loc": ["body", "outputs", output], "msg": msg})
        seen.setdefault(name, output)
    if errors:
        raise Invalid("two outputs name the same dataset", errors=errors)


# --- worker pools -----------------------------------------------------------------------------

# The pools the autoscaler may not grow (maximum 0) that have no live worker either: nothing
# will ever take their jobs. A pool without a row is not autoscaled: its workers are started
# by hand and may come at any time.
_CLOSED_POOLS = """
SELECT p.pool FROM worker_pools p
WHERE p.max_workers = 0 AND NOT EXISTS (
    SELECT 1 FROM workers w
    WHERE w.device = p.pool AND NOT w.stopping
      AND w.heartbeat_at > now() - make_interval(secs => $1))
"""


class ClosedPools:
    """The pools that can run nothing (``_CLOSED_POOLS``), asked at most every ``ttl_s`` by
    each gateway: pool bounds change with the operator's settings, not per request."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._known: tuple[float, frozenset[str]] | None = None

    async def get(self, db: AdmissionDb) -> frozenset[str]:
        now = time.monotonic()
        if self._known is not None and self._known[0] > now:
            return self._known[1]
        async with db.raw() as conn:
            rows = await conn.fetch(_CLOSED_POOLS, WORKER_TTL_S)
        closed = frozenset(str(r[0]) for r in rows)
        self._known = (now + self.ttl_s, closed)
        return closed


async def _check_device(
    *, db: AdmissionDb, device: str, spec: KernelSpec, pools: ClosedPools
) -> None:
    wanted = [d for d in spec.devices if device in ("any", d)]
    closed = await pools.get(db)
    if not wanted or any(d not in closed for d in wanted):
        return
    shut = ", ".join(f"the {d} pool's maximum is 0 workers and no {d} worker is up" for d in wanted)
    raise Invalid(
        f"no worker pool can ever run this {device!r} job: {shut}",
        errors=[{"loc": ["body", "device"], "msg": f"no pool can run it ({'/'.join(wanted)})"}],
    )


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    size: int
    tier: str
    checksum: str | None = None


async def _datasets_named(
    *, session: AsyncSession, tenant_id: uuid.UUID, names: list[str]
) -> dict[str, Stored]:
    """The tenant's datasets among ``names``, in one query however many: size and tier."""
    rows = await session.execute(
        select(Dataset.name, Dataset.size, Dataset.tier).where(
            Dataset.tenant_id == tenant_id,
            Dataset.name == any_(bindparam("names", names, type_=ARRAY(Text))),
        )
    )
    return {name: Stored(size, tier) for name, size, tier in rows}


async def _datasets(
    *, session: AsyncSession, tenant_id: uuid.UUID, data: JobSubmit
) -> dict[str, Stored]:
    """The tenant's datasets among the job's inputs: size and tier by name."""
    names = list(set(data.inputs.values()))
    if not names:
        return {}
    rows = await session.execute(
        select(Dataset.name, Dataset.size, Dataset.tier, Dataset.checksum).where(
            Dataset.tenant_id == tenant_id, Dataset.name.in_(names)
        )
    )
    return {name: Stored(size, tier, checksum) for name, size, tier, checksum in rows}


def _check_inputs_exist(inputs: Mapping[str, str], found: Mapping[str, Stored]) -> None:
    errors = [
        {"loc": ["body", "inputs", n], "msg": f"dataset {name!r} not found"}
        for n, name in sorted(inputs.items())
        if name not in found
    ]
    if errors:
        raise Invalid("input dataset not found", errors=errors)


def check_pin_format(pins: Mapping[str, str] | None) -> None:
    """422 for a pin that is no checksum of the catalogue's form (``CHECKSUM_PATTERN``)."""
    errors = [
        {"loc": ["body", "inputs", n, "checksum"], "msg": '"xxh3-128:<hex>" or "blake3:<hex>"'}
        for n, pin in sorted((pins or {}).items())
        if re.fullmatch(CHECKSUM_PATTERN, pin) is None
    ]
    if errors:
        raise Invalid("a pinned input's checksum is malformed", errors=errors)


def _check_pins(
    inputs: Mapping[str, str], pins: Mapping[str, str], found: Mapping[str, Stored]
) -> None:
    """422 for each pinned input whose dataset holds other bytes than its pin says."""
    errors = [
        {
            "loc": ["body", "inputs", n, "checksum"],
            "msg": f"dataset {inputs[n]!r} has checksum {found[inputs[n]].checksum!r}",
        }
        for n, pin in sorted(pins.items())
        if n in inputs and found[inputs[n]].checksum != pin
    ]
    if errors:
        raise Invalid("a pinned input's dataset has other bytes", errors=errors)


async def _read_headers(
    *,
    storage: Storage,
    tenant_id: uuid.UUID,
    inputs: Mapping[str, str],
    found: Mapping[str, Stored],
) -> dict[str, ArrayHeader]:
    """Each input's ``.npy`` header, read from its tier (the first bytes only); 422 naming
    every input that is not a readable ``.npy`` array."""
    order = sorted(inputs)
    got = await asyncio.gather(
        *(_header(storage, object_key(tenant_id, inputs[n]), found[inputs[n]]) for n in order)
    )
    problems = {n: h for n, h in zip(order, got, strict=True) if isinstance(h, str)}
    if problems:
        _refuse_inputs(None, problems)
    return {n: h for n, h in zip(order, got, strict=True) if isinstance(h, ArrayHeader)}


async def _header(storage: Storage, key: str, stored: Stored) -> ArrayHeader | str:
    """The header, or what is wrong with the file."""
    tier = storage.tier(stored.tier)
    try:
        head = await storage.guard(
            stored.tier, lambda: tier.read(key, 0, min(stored.size, FIRST_READ))
        )
        end = header_end(head)
        if len(head) < end <= stored.size:
            head += await storage.guard(
                stored.tier, lambda: tier.read(key, len(head), end - len(head))
            )
        return parse_header(head, file_size=stored.size)
    except NpyError as exc:
        return str(exc)
    except FileNotFoundError:  # deleted or moved since its row was read
        return "dataset not found"


def _refuse_inputs(spec: KernelSpec | None, problems: Mapping[str, str]) -> None:
    which = "the inputs" if spec is None else f"the inputs of kernel {spec.name!r}"
    detail = "; ".join(f"{n}: {p}" for n, p in sorted(problems.items()))
    raise Invalid(
        f"{which} cannot run: {detail}",
        errors=[{"loc": ["body", "inputs", n], "msg": p} for n, p in sorted(problems.items())],
    )


# --- footprint --------------------------------------------------------------------------------


def _check_memory(footprint: Footprint, limit: int) -> None:
    if footprint.memory <= limit:
        return
    msg = (
        f"predicted memory footprint {footprint.memory} bytes (inputs {footprint.inputs}, "
        f"outputs {footprint.output_bytes}, working memory {footprint.working}) is over the "
        f"per-job memory limit of {limit} bytes"
    )
    raise Invalid(
        f"the job cannot fit in memory: {msg}", errors=[{"loc": ["body", "inputs"], "msg": msg}]
    )


def _check_storage(footprint: Footprint, outputs: Mapping[str, str], left: int) -> None:
    if footprint.output_bytes <= left:
        return
    each = "; ".join(
        f"{n} ({outputs[n]!r}): {o.describe()}" for n, o in sorted(footprint.outputs.items())
    )
    raise QuotaExceeded(
        f"the outputs are predicted to store {footprint.output_bytes} bytes ({each}), over "
        f"the {max(left, 0)} bytes left of the storage_bytes quota"
    )
