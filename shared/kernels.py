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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

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

PLUGIN_GROUP = "stratus.kernels"

log = get_logger(__name__)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SaxpyParams(Params):
    a: float = Field(description="scale of x")


class MatmulParams(Params):
    pass


class Stencil2dParams(Params):
    iterations: int = Field(ge=1, le=1_000_000, description="Jacobi steps")


class NbodyParams(Params):
    steps: int = Field(ge=1, le=1_000_000)
    dt: float = Field(gt=0)
    softening: float = Field(default=0.01, ge=0)


class HistogramParams(Params):
    bins: int = Field(ge=1, le=10_000_000)
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
    samples: int = Field(ge=1, le=10**12, description="number of random points")
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    description: str
    params: type[Params]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    implementation: str | None = None  # "module:attribute" of a plugin's worker-side Kernel

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
        """Return the params with defaults filled in, or raise ``Invalid`` naming the field."""
        try:
            model = self.params.model_validate(params)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", "params", *[str(p) for p in e["loc"]]], "msg": e["msg"]}
                for e in exc.errors()
            ]
            raise Invalid(
                f"params do not match the schema of kernel {self.name!r}", errors=errors
            ) from exc
        return model.model_dump(mode="json")


BUILTIN: tuple[KernelSpec, ...] = (
    KernelSpec(
        "saxpy",
        "y = a*x + y on 1-D float64 arrays",
        SaxpyParams,
        inputs=("x", "y"),
        outputs=("y",),
    ),
    KernelSpec("matmul", "c = a @ b", MatmulParams, inputs=("a", "b"), outputs=("c",)),
    KernelSpec(
        "stencil2d",
        "Jacobi heat steps on a 2-D grid, edges fixed",
        Stencil2dParams,
        inputs=("grid",),
        outputs=("grid",),
    ),
    KernelSpec(
        "nbody",
        "kick-drift-kick leapfrog, all-pairs gravity (G = 1)",
        NbodyParams,
        inputs=("bodies",),
        outputs=("bodies",),
    ),
    KernelSpec(
        "histogram",
        "counts of numpy.histogram(data, bins, range)",
        HistogramParams,
        inputs=("data",),
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
