"""The kernel catalogue: name, description, devices, params model, inputs and outputs.

This is the public contract of each kernel (served by ``GET /v1/kernels`` and used by the
gateway to validate submissions); implementations live in the worker
(``services/worker/kernels``), keyed by the same names. This module never imports numba.

Third-party kernels
-------------------
A package adds a kernel with one entry point in the group ``stratus.kernels`` that names a
``KernelSpec`` in a module that does not import numba either (the gateway loads it). The
spec's ``implementation`` names, as ``"module:attribute"``, the worker-side declaration
(a ``services.worker.kernels.base.Kernel``), imported only by the worker's pool processes::

    # pyproject.toml of the package
    [project.entry-points."stratus.kernels"]
    smooth = "acme_kernels.spec:SMOOTH"

    # acme_kernels/spec.py
    class SmoothParams(Params):
        width: int = Field(ge=1)

    SMOOTH = KernelSpec("smooth", "moving average", SmoothParams, inputs=("data",),
                        outputs=("data",), devices=("cpu",),
                        implementation="acme_kernels.impl:KERNEL")

    # acme_kernels/impl.py
    KERNEL = Kernel("smooth", run_cpu, warm)

Install the package beside Stratus on the gateways and the workers and restart them. A
plugin that fails to load, or whose name is taken by a built-in kernel, is left out with a
warning in the log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from shared.errors import Invalid
from shared.logging import get_logger
from shared.npy import TIMES, ArrayHeader, npy_file_bytes
from shared.validation import JsonInt

PLUGIN_GROUP = "stratus.kernels"

log = get_logger(__name__)


class Params(BaseModel):
    """A kernel's params. Validated strictly, as the JSON they are (``validate_params``): a
    bool is not an integer, a string is not a number, 10.0 is not an integer."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SaxpyParams(Params):
    a: float = Field(description="scale of x (finite)")


class MatmulParams(Params):
    pass


class Stencil2dParams(Params):
    iterations: JsonInt = Field(ge=1, le=1_000_000, description="Jacobi steps, 1 to 1,000,000")


class NbodyParams(Params):
    steps: JsonInt = Field(ge=1, le=1_000_000, description="leapfrog steps, 1 to 1,000,000")
    dt: float = Field(gt=0, description="time step (> 0, finite)")
    softening: float = Field(default=0.01, ge=0, description="softening length (>= 0, finite)")


# The counts are the job's result: a million bins keep its JSON a few MB at most.
MAX_BINS = 1_000_000


class HistogramParams(Params):
    bins: JsonInt = Field(
        ge=1,
        le=MAX_BINS,
        description=f"number of equal bins, 1 to {MAX_BINS:,} (the result's size)",
    )
    range: tuple[FiniteFloat, FiniteFloat] = Field(description="[lo, hi], finite, lo < hi")

    @model_validator(mode="after")
    def _range_ordered(self) -> HistogramParams:
        if not self.range[0] < self.range[1]:
            raise ValueError("range must be [lo, hi] with lo < hi")
        width = self.range[1] - self.range[0]
        if not math.isfinite(width):
            raise ValueError("range is too wide: hi - lo must be a finite float64")
        if not math.isfinite(self.bins / width):
            raise ValueError("range is too narrow for this many bins")
        return self


class MontecarloPiParams(Params):
    samples: JsonInt = Field(ge=1, le=10**12, description="number of random points, 1 to 10**12")
    seed: JsonInt = Field(default=0, ge=0, le=2**63 - 1, description="0 to 2**63 - 1")


Headers = Mapping[str, ArrayHeader]


def _unencodable(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (JSON can escape one; UTF-8 cannot hold it)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


F64 = np.dtype(np.float64)


@dataclass(frozen=True)
class OutputArray:
    """An output a kernel will write, as its inputs' headers predict it."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic] = F64

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def file_bytes(self) -> int:
        return npy_file_bytes(self.shape, self.dtype)

    def describe(self) -> str:
        dims = TIMES.join(str(d) for d in self.shape)
        return f"a {dims} {self.dtype} array, {self.data_bytes} bytes of data"


@dataclass(frozen=True)
class Footprint:
    """What a job maps, writes and allocates, predicted from its inputs' headers (bytes)."""

    inputs: int  # the input arrays, memory-mapped whole
    outputs: Mapping[str, OutputArray]  # by output name
    working: int  # what the kernel allocates beside them (copies, scratch, counts)

    @property
    def output_bytes(self) -> int:
        """What the outputs will store: their ``.npy`` files."""
        return sum(o.file_bytes for o in self.outputs.values())

    @property
    def memory(self) -> int:
        return self.inputs + self.output_bytes + self.working


@dataclass(frozen=True)
class InputCheck:
    """A kernel's verdict on its inputs' headers: what is wrong with each input (by input
    name), or, when nothing is, the job's footprint (``None``: the kernel does not say)."""

    problems: Mapping[str, str] = field(default_factory=dict)
    footprint: Footprint | None = None


# A kernel's shape rules: (headers by input name, validated params) -> verdict.
ShapeRules = Callable[[Headers, Mapping[str, Any]], InputCheck]


@dataclass(frozen=True)
class KernelSpec:
    name: str
    description: str
    params: type[Params]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    implementation: str | None = None  # "module:attribute" of a plugin's worker-side Kernel
    rules: ShapeRules | None = None  # dtype, rank and shape rules of the inputs; footprint

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "devices": list(self.devices),
            "params_schema": self.params.model_json_schema(),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return the params with defaults filled in, or raise ``Invalid`` naming the field.
        They are validated as the JSON they came as, strictly (see ``Params``)."""
        text = json.dumps(params, ensure_ascii=False)
        if not text.isascii() and _unencodable(text):
            raise Invalid(
                "params must be valid Unicode text",
                errors=[{"loc": ["body", "params"], "msg": "a lone surrogate is not text"}],
            )
        try:
            model = self.params.model_validate_json(text, strict=True)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", "params", *[str(p) for p in e["loc"]]], "msg": e["msg"]}
                for e in exc.errors()
            ]
            raise Invalid(
                f"params do not match the schema of kernel {self.name!r}", errors=errors
            ) from exc
        return model.model_dump(mode="json")

    def check_inputs(self, headers: Headers, params: Mapping[str, Any]) -> InputCheck:
        """The kernel's rules applied to its inputs' headers (every input present); a kernel
        without rules (a plugin may have none) accepts any array and predicts nothing."""
        if self.rules is None:
            return InputCheck()
        return self.rules(headers, params)


# --- the built-in kernels' shape rules -------------------------------------------------------
# They mirror what the worker's kernels accept (``services/worker/kernels``): float64 arrays
# (any byte order or layout: the worker then makes a native C-ordered copy), and for
# ``histogram`` integers too (converted block by block).


def _array_problem(h: ArrayHeader, ndim: int, *, ints: bool = False) -> str | None:
    kind_ok = (h.dtype.kind == "f" and h.dtype.itemsize == 8) or (ints and h.dtype.kind in "iu")
    if h.dtype.hasobject or not kind_ok:
        wanted = "float64 or integer" if ints else "float64"
        return f"dtype {h.dtype} is not supported ({wanted} only)"
    if h.ndim != ndim:
        return f"must be a {ndim}-D array, not {h.describe()}"
    return None


def _arrays(headers: Headers, ranks: Mapping[str, int], *, ints: bool = False) -> dict[str, str]:
    """What is wrong with each input's dtype or rank."""
    found = {n: _array_problem(headers[n], ndim, ints=ints) for n, ndim in ranks.items()}
    return {n: p for n, p in found.items() if p is not None}


def _copies(headers: Headers) -> int:
    """The float64 copies the worker makes of inputs that are not native C-ordered float64."""
    return sum(h.count * F64.itemsize for h in headers.values() if not h.is_native_float64)


def _footprint(
    headers: Headers, outputs: Mapping[str, tuple[int, ...]], working: int
) -> InputCheck:
    return InputCheck(
        footprint=Footprint(
            inputs=sum(h.nbytes for h in headers.values()),
            outputs={name: OutputArray(shape) for name, shape in outputs.items()},
            working=working,
        )
    )


def saxpy_rules(headers: Headers, params: Mapping[str, Any]) -> InputCheck:
    problems = _arrays(headers, {"x": 1, "y": 1})
    x, y = headers["x"], headers["y"]
    if not problems and x.shape != y.shape:
        problems["y"] = f"saxpy: x has {x.count} values but y has {y.count} (same length needed)"
    if problems:
        return InputCheck(problems)
    return _footprint(headers, {"y": y.shape}, _copies(headers))


def matmul_rules(headers: Headers, params: Mapping[str, Any]) -> InputCheck:
    problems = _arrays(headers, {"a": 2, "b": 2})
    a, b = headers["a"], headers["b"]
    if not problems and a.shape[1] != b.shape[0]:
        problems["b"] = (
            f"matmul: a is {a.dims()} but b is {b.dims()} (a's columns must equal b's rows)"
        )
    if problems:
        return InputCheck(problems)
    return _footprint(headers, {"c": (a.shape[0], b.shape[1])}, _copies(headers))


def stencil2d_rules(headers: Headers, params: Mapping[str, Any]) -> InputCheck:
    problems = _arrays(headers, {"grid": 2})
    if problems:
        return InputCheck(problems)
    grid = headers["grid"]
    scratch = grid.count * F64.itemsize  # the previous step, beside the output
    return _footprint(headers, {"grid": grid.shape}, scratch + _copies(headers))


NBODY_COLUMNS = 7  # x, y, z, vx, vy, vz, m
NBODY_WORK_COLUMNS = 11  # positions, velocities, accelerations (3 each), masses, potentials


def nbody_rules(headers: Headers, params: Mapping[str, Any]) -> InputCheck:
    problems = _arrays(headers, {"bodies": 2})
    bodies = headers["bodies"]
    if not problems and bodies.shape[1] != NBODY_COLUMNS:
        problems["bodies"] = (
            f"nbody: bodies must be n{TIMES}7 (x, y, z, vx, vy, vz, m), not {bodies.dims()}"
        )
    if problems:
        return InputCheck(problems)
    working = bodies.shape[0] * NBODY_WORK_COLUMNS * F64.itemsize
    return _footprint(headers, {"bodies": bodies.shape}, working + _copies(headers))


# Per bin: the int64 count, its Python int in the result's list, and its JSON text.
HISTOGRAM_BYTES_PER_BIN = 64


def histogram_rules(headers: Headers, params: Mapping[str, Any]) -> InputCheck:
    problems = _arrays(headers, {"data": 1}, ints=True)
    if problems:
        return InputCheck(problems)
    return _footprint(headers, {}, (int(params["bins"]) + 1) * HISTOGRAM_BYTES_PER_BIN)


BUILTIN: tuple[KernelSpec, ...] = (
    KernelSpec(
        "saxpy",
        "y = a*x + y on 1-D float64 arrays",
        SaxpyParams,
        inputs=("x", "y"),
        outputs=("y",),
        rules=saxpy_rules,
    ),
    KernelSpec(
        "matmul",
        "c = a @ b",
        MatmulParams,
        inputs=("a", "b"),
        outputs=("c",),
        rules=matmul_rules,
    ),
    KernelSpec(
        "stencil2d",
        "Jacobi heat steps on a 2-D grid, edges fixed",
        Stencil2dParams,
        inputs=("grid",),
        outputs=("grid",),
        rules=stencil2d_rules,
    ),
    KernelSpec(
        "nbody",
        "kick-drift-kick leapfrog, all-pairs gravity (G = 1)",
        NbodyParams,
        inputs=("bodies",),
        outputs=("bodies",),
        rules=nbody_rules,
    ),
    KernelSpec(
        "histogram",
        "counts of numpy.histogram(data, bins, range)",
        HistogramParams,
        inputs=("data",),
        rules=histogram_rules,
    ),
    KernelSpec(
        "montecarlo_pi", "estimate pi from random points in the unit square", MontecarloPiParams
    ),
)


def plugin_specs(group: str = PLUGIN_GROUP) -> list[KernelSpec]:
    """The specs of the installed third-party kernels (see the module docstring)."""
    specs: list[KernelSpec] = []
    for ep in entry_points(group=group):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plugin must not stop the service
            log.warning("kernel_plugin_failed", entry_point=ep.name, error=repr(exc))
            continue
        if not isinstance(spec, KernelSpec) or not spec.implementation:
            log.warning("kernel_plugin_invalid", entry_point=ep.name)
            continue
        specs.append(spec)
    return specs


def build_catalogue(*groups: Iterable[KernelSpec]) -> dict[str, KernelSpec]:
    """Name -> spec; the first spec of a name wins (built-ins come first)."""
    catalogue: dict[str, KernelSpec] = {}
    for spec in (s for group in groups for s in group):
        if spec.name in catalogue:
            log.warning("kernel_name_taken", kernel=spec.name, implementation=spec.implementation)
            continue
        catalogue[spec.name] = spec
    return catalogue


CATALOGUE: dict[str, KernelSpec] = build_catalogue(BUILTIN, plugin_specs())


def get_spec(name: str) -> KernelSpec:
    spec = CATALOGUE.get(name)
    if spec is None:
        raise Invalid(
            f"unknown kernel {name!r}",
            errors=[
                {"loc": ["body", "kernel"], "msg": f"unknown kernel; known: {sorted(CATALOGUE)}"}
            ],
        )
    return spec
