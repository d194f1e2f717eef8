"""The kernel catalogue: name, description, devices, params model, inputs and outputs.

This is the public contract of each kernel (served by ``GET /v1/kernels`` and used by the
gateway to validate submissions); implementations live in the worker
(``services/worker/kernels``), keyed by the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import Invalid


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    range: tuple[float, float]

    @model_validator(mode="after")
    def _range_ordered(self) -> HistogramParams:
        if not self.range[0] < self.range[1]:
            raise ValueError("range must be [lo, hi] with lo < hi")
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


CATALOGUE: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
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
}


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
