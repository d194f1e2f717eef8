"""saxpy on a GPU: a grid-stride loop, consecutive threads on consecutive elements."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from services.worker.kernels.base import Paths, output_array
from services.worker.kernels.cuda_launch import stride_blocks
from services.worker.kernels.saxpy import load

THREADS = 256


@cuda.jit(cache=True)
def saxpy_kernel(a: float, x: Any, y: Any, out: Any) -> None:
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < x.shape[0]:
        out[i] = a * x[i] + y[i]
        i += stride


def saxpy(a: float, x: Any, y: Any, out: Any) -> None:
    """Device arrays in, device array out."""
    saxpy_kernel[stride_blocks(x.shape[0], THREADS), THREADS](a, x, y, out)


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    x, y = load(inputs)
    dx, dy = cuda.to_device(x), cuda.to_device(y)
    dout = cuda.device_array_like(dy)
    if x.shape[0]:
        saxpy(float(params["a"]), dx, dy, dout)
    with output_array(outputs, "y", y.shape) as out:
        if x.shape[0]:
            dout.copy_to_host(out)
    return {"n": int(x.shape[0])}


def warm_cuda() -> None:
    x = cuda.to_device(np.ones(2))
    saxpy(2.0, x, x, cuda.device_array(2))
