"""Submitting an array (``POST /v1/jobs`` with ``array``): every element checked before
anything is stored, without building its elements.

Element ``i`` (0 to ``size`` - 1) runs with ``params``, then ``overrides[i]`` merged over
them, then ``index_param`` set to ``i``; ``{index}`` in its dataset names is ``i``. The
scheduler builds each element's row only when it is about to run it, by the same rule
(``shared.jobs.arrays.element_of``). An array of 100,000 elements is checked in a few
distinct parameter sets, not 100,000:

- Elements with the same override (compared as canonical JSON; no override is ``{}``) differ
  only in their index. A kernel's bound on an integer param is an interval (``ge``/``le``,
  as every built-in kernel's is), and the indices of a group lie between its first and its
  last, so those two elements pass exactly when every element of the group does. Without an
  ``index_param`` the elements of a group have the same params: one check holds for all.
- Dataset names differ only in the digits of the index: the name rule holds for all of them
  when it holds for one, except for the length, which the last (longest) index decides.

A refused element is a 422 whose ``errors[].loc`` names it:
``["body", "array", "elements", i, "params" | "inputs", ...]``; a dataset name that is wrong for
every element is refused where it is given (``["body", "outputs", name]``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from services.gateway.jobs.schemas import ArrayOut, ArraySpec, JobSubmit
from shared.errors import Invalid
from shared.jobs.arrays import INDEX, Counts, element_of
from shared.kernels import KernelSpec, Params
from shared.storage.names import name_problem

# The most errors a refusal lists (one per element could be 100,000).
MAX_ERRORS = 20


def names_of(templates: Mapping[str, str], i: int) -> dict[str, str]:
    """Element ``i``'s dataset names (``element_of``'s rule)."""
    return element_of(
        params={}, inputs=templates, outputs={}, index=i, index_param=None, overrides=None
    ).inputs


def at_element(exc: Invalid, i: int) -> Invalid:
    """``exc`` (raised for one job's params, inputs or outputs) as element ``i``'s."""
    errors = []
    for e in exc.errors:
        loc = list(e.get("loc", []))
        if loc[:1] == ["body"]:
            loc = ["body", "array", "elements", i, *loc[1:]]
        errors.append({**e, "loc": loc})
    return Invalid(f"array element {i}: {exc.detail}", errors=errors)


@dataclass(frozen=True)
class Sample:
    """An element that the checks of inputs stand for (the first and the last): its
    validated params and its dataset names."""

    index: int
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class ArrayPlan:
    """A checked array: what its row stores and the elements its inputs are checked on."""

    array: ArraySpec
    samples: tuple[Sample, ...]

    @property
    def size(self) -> int:
        return self.array.size


def created_array(array: ArraySpec) -> ArrayOut:
    """An array as it is created: every element pending."""
    counts = Counts(size=array.size, cancelled=False, pending=array.size)
    return ArrayOut(
        size=array.size,
        index_param=array.index_param,
        max_concurrent=array.max_concurrent,
        counts=counts.by_state(),
    )


# An array's settings and counts on plain asyncpg (an idempotent replay's answer). $1 its id.
ARRAY_OF = """
SELECT size, index_param, max_concurrent, cancelled, n_pending, n_queued, n_running,
       n_succeeded, n_failed, n_cancelled, n_timed_out
FROM job_arrays WHERE job_id = $1
"""


def array_out(row: Mapping[str, Any]) -> ArrayOut:
    """``ARRAY_OF``'s row as the answer shows it."""
    counts = Counts(
        size=row["size"],
        cancelled=row["cancelled"],
        pending=row["n_pending"],
        queued=row["n_queued"],
        running=row["n_running"],
        succeeded=row["n_succeeded"],
        failed=row["n_failed"],
        cancelled_n=row["n_cancelled"],
        timed_out=row["n_timed_out"],
    )
    return ArrayOut(
        size=row["size"],
        index_param=row["index_param"],
        max_concurrent=row["max_concurrent"],
        counts=counts.by_state(),
    )


def check_array(data: JobSubmit, spec: KernelSpec, *, max_size: int) -> ArrayPlan:
    """Every element of ``data.array`` checked (params and dataset names); 422 otherwise."""
    array = data.array
    assert array is not None
    _check_settings(array, spec, max_size)
    groups = _groups(array)
    _check_no_index_elsewhere(data, groups)
    _check_names(data.inputs, "inputs", array.size)
    _check_names(data.outputs, "outputs", array.size)
    _check_outputs_per_element(data.outputs, array.size)
    validated = _validate_groups(data.params, array, spec, groups)
    last = array.size - 1
    samples = tuple(
        Sample(i, validated[i], names_of(data.inputs, i), names_of(data.outputs, i))
        for i in sorted({0, last})
    )
    return ArrayPlan(array, samples)


def _refuse(loc: list[Any], msg: str, detail: str | None = None) -> Invalid:
    return Invalid(detail or msg, errors=[{"loc": ["body", *loc], "msg": msg}])


def _check_settings(array: ArraySpec, spec: KernelSpec, max_size: int) -> None:
    if array.size > max_size:
        raise _refuse(["array", "size"], f"at most {max_size} elements")
    if array.overrides is not None and len(array.overrides) > array.size:
        msg = f"{len(array.overrides)} overrides for {array.size} elements (at most one each)"
        raise _refuse(["array", "overrides"], msg)
    if array.index_param is not None and array.index_param not in spec.params.model_fields:
        known = sorted(spec.params.model_fields)
        msg = f"not a param of kernel {spec.name!r} (its params: {known})"
        raise _refuse(["array", "index_param"], msg)


def _check_no_index_elsewhere(data: JobSubmit, groups: list[tuple[int, int]]) -> None:
    """``{index}`` is replaced in dataset names only: anywhere else it would reach the
    kernel as it is, which is never what a sweep meant. Each distinct override is looked
    at once, at its first index."""
    overrides = (data.array and data.array.overrides) or []
    places: list[tuple[list[Any], object]] = [(["params"], data.params), (["labels"], data.labels)]
    places += [(["array", "overrides", i], overrides[i]) for i, _ in groups if i < len(overrides)]
    for loc, value in places:
        if _mentions_index(value):
            msg = "{index} is replaced in dataset names (inputs, outputs) only"
            raise _refuse(loc, msg)


def _mentions_index(value: object) -> bool:
    """Whether a string in ``value`` (JSON: its keys too) holds ``{index}``."""
    if isinstance(value, str):
        return INDEX in value
    if isinstance(value, dict):
        return any(_mentions_index(k) or _mentions_index(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_index(v) for v in value)
    return False


def check_no_index(data: JobSubmit) -> None:
    """A job that is no array has no index to put in its dataset names."""
    for kind, names in (("inputs", data.inputs), ("outputs", data.outputs)):
        for n, name in sorted(names.items()):
            if INDEX in name:
                raise _refuse([kind, n], "{index} is for the dataset names of an array only")


def _check_names(templates: Mapping[str, str], kind: str, size: int) -> None:
    """The longest name, the last index's, by the upload rule (the schema checked the rest)."""
    for n, template in sorted(templates.items()):
        longest = template.replace(INDEX, str(size - 1))
        problem = name_problem(longest)
        if problem is not None:
            detail = f"invalid dataset name for element {size - 1} ({longest!r}): {problem}"
            raise _refuse([kind, n], f"element {size - 1}: {problem}", detail)


def _check_outputs_per_element(outputs: Mapping[str, str], size: int) -> None:
    """Each element writes datasets of its own: every output names ``{index}``, and no two
    outputs of two elements come to the same name (``x{index}`` at 12 is ``x1{index}`` at 2)."""
    for n, template in sorted(outputs.items()):
        if INDEX not in template:
            msg = "an output of an array must contain {index} (each element writes its own)"
            raise _refuse(["outputs", n], msg)
    if len(outputs) < 2:
        return  # one template names a different dataset for each index
    seen: dict[str, tuple[int, str]] = {}
    for i in range(size):
        for n, name in names_of(outputs, i).items():
            first = seen.setdefault(name, (i, n))
            if first != (i, n):
                msg = f"element {i} writes {name!r}, as output {first[1]!r} of element {first[0]}"
                raise _refuse(["outputs", n], msg)


# --- params -------------------------------------------------------------------------------


def _groups(array: ArraySpec) -> list[tuple[int, int]]:
    """The elements by distinct override (compared as canonical JSON; none is ``{}``): the
    first and the last index of each, in order of the first."""
    overrides = array.overrides or []
    firsts: dict[bytes, int] = {}
    lasts: dict[bytes, int] = {}
    for i, override in enumerate(overrides):
        key = _canonical(override)
        firsts.setdefault(key, i)
        lasts[key] = i
    if len(overrides) < array.size:  # the elements without an override
        key = _canonical({})
        firsts.setdefault(key, len(overrides))
        lasts[key] = array.size - 1
    return sorted((first, lasts[key]) for key, first in firsts.items())


def _canonical(override: Mapping[str, Any]) -> bytes:
    """An override as canonical JSON. A lone surrogate (JSON can escape one, UTF-8 cannot
    hold it) takes the slower ``json``, which escapes it; the element's check refuses it."""
    try:
        return orjson.dumps(override, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(override, sort_keys=True).encode()


def _validate_groups(
    params: Mapping[str, Any], array: ArraySpec, spec: KernelSpec, groups: list[tuple[int, int]]
) -> dict[int, dict[str, Any]]:
    """Each group's first and last element validated (only its first without an
    ``index_param``: they have the same params); the validated params of elements 0 and
    ``size`` - 1, which the checks of inputs use."""

    def params_of(i: int) -> dict[str, Any]:
        return element_of(
            params=params,
            inputs={},
            outputs={},
            index=i,
            index_param=array.index_param,
            overrides=array.overrides,
        ).params

    ends = {first for first, _ in groups}
    if array.index_param:
        ends.update(last for _, last in groups)
    indices = sorted(ends)
    _validate_all(spec, indices, [params_of(i) for i in indices])
    return {i: spec.validate_params(params_of(i)) for i in {0, array.size - 1}}


@functools.cache
def _many(model: type[Params]) -> TypeAdapter[list[Params]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def _validate_all(spec: KernelSpec, indices: list[int], sets: list[dict[str, Any]]) -> None:
    """``spec.validate_params`` of every set (element ``indices[k]``'s params are
    ``sets[k]``) in one validation of a JSON list; the first element refused is validated
    alone again, so that its 422 is exactly a job's, at the element."""
    text = json.dumps(sets, ensure_ascii=False)
    try:
        text.encode()
        _many(spec.params).validate_json(text, strict=True)
        return
    except UnicodeEncodeError:  # a lone surrogate: find its element one set at a time
        first = range(len(sets))
    except ValidationError as exc:
        first = range(int(exc.errors()[0]["loc"][0]), len(sets))
    for k in first:
        try:
            spec.validate_params(sets[k])
        except Invalid as exc:
            raise at_element(exc, indices[k]) from None
    # Never reached while one set validates as the list's item does; refused all the same.
    refused = Invalid(
        f"params do not match the schema of kernel {spec.name!r}",
        errors=[{"loc": ["body", "params"], "msg": "refused"}],
    )
    raise at_element(refused, indices[first.start])
