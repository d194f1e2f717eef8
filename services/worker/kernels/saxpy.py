"""saxpy: ``y = a*x + y`` on 1-D float64 arrays (memory-bound: 24 bytes per element)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker.kernels.base import (
    Kernel,
    KernelInputError,
    Paths,
    load_input,
    output_array,
    readonly,
)


@numba.njit(cache=True, parallel=True, nogil=True)
def saxpy(a: float, x: Any, y: Any, out: Any) -> None:
    for i in prange(x.shape[0]):
        out[i] = a * x[i] + y[i]


def load(inputs: Paths) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    x = load_input(inputs, "x", ndim=1)
    y = load_input(inputs, "y", ndim=1)
    if x.shape != y.shape:
        raise KernelInputError(
            f"inputs 'x' and 'y' must have the same length, not {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    x, y = load(inputs)
    with output_array(outputs, "y", y.shape) as out:
        saxpy(float(params["a"]), x, y, out)
    return {"n": int(x.shape[0])}


def warm() -> None:
    x = readonly(np.ones(3))
    saxpy(2.0, x, x, np.empty(3))


KERNEL = Kernel("saxpy", run_cpu, warm, cuda="services.worker.kernels.saxpy_cuda")
