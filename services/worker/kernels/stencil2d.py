"""stencil2d: Jacobi heat steps on a 2-D float64 grid, edges fixed.

Each step is ``v[1:-1,1:-1] = 0.25*(u[:-2,1:-1] + u[2:,1:-1] + u[1:-1,:-2] + u[1:-1,2:])``
on a copy of the previous step ``u``, summed in that order, so the result is bit-identical
to the NumPy expression. Two buffers take turns; the one that receives the last step is the
memory-mapped output, so the result is written once, in place.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker import checkpoint
from services.worker.kernels.base import Kernel, Paths, load_input, output_array


@numba.njit(cache=True, nogil=True)
def _row(up: Any, mid: Any, down: Any, out: Any) -> None:
    # rows as 1-D slices and a loop from the first element: this is the form that vectorises
    for j in range(1, mid.shape[0] - 1):
        out[j] = 0.25 * (up[j] + down[j] + mid[j - 1] + mid[j + 1])


@numba.njit(cache=True, parallel=True, nogil=True)
def jacobi(src: Any, dst: Any, iterations: int) -> None:
    """``iterations`` steps from ``src`` (edges included) ping-ponging with ``dst``; both
    start as copies of the grid. The last step lands in ``dst`` if ``iterations`` is odd."""
    rows = src.shape[0]
    a, b = src, dst
    for _ in range(iterations):
        for i in prange(1, rows - 1):
            _row(a[i - 1], a[i], a[i + 1], b[i])
        a, b = b, a


def load(inputs: Paths) -> np.ndarray[Any, Any]:
    return load_input(inputs, "grid", ndim=2)


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    grid = load(inputs)
    iterations = int(params["iterations"])
    ck = checkpoint.current("stencil2d", "cpu")
    with output_array(outputs, "grid", grid.shape) as out:
        saved = ck.resume()
        done = saved.step if saved is not None else 0
        start = saved.arrays["grid"] if saved is not None else grid  # the latest step
        out[...] = start
        scratch = start.copy()
        # the last step must land in the output: it starts as ``dst`` for an odd count
        src, dst = (scratch, out) if (iterations - done) % 2 else (out, scratch)
        # one block unless progress is reported or checkpoints are taken
        for steps in ck.blocks(iterations, done):
            jacobi(src, dst, steps)
            done += steps
            if steps % 2:  # the latest step is in ``dst``: it is the next block's source
                src, dst = dst, src
            ck.after_block(done, iterations, partial(checkpoint.State, done, {"grid": src}))
    return {"shape": list(grid.shape), "iterations": iterations}


def warm() -> None:
    g = np.ones((4, 4))
    jacobi(g, g.copy(), 1)


KERNEL = Kernel("stencil2d", run_cpu, warm, cuda="services.worker.kernels.stencil2d_cuda")
