"""stencil2d on a GPU: one launch per Jacobi step; each block stages its tile of the grid
plus a one-cell halo in shared memory (each value read from global memory once per block,
rows read by consecutive threads), then computes the interior points of its tile. The sum
is taken in the NumPy expression's order, so results are bit-identical."""

from __future__ import annotations

from functools import partial
from typing import Any

import numba
import numpy as np
from numba import cuda

from services.worker import checkpoint
from services.worker.kernels.base import Paths, output_array
from services.worker.kernels.cuda_launch import tiles
from services.worker.kernels.stencil2d import load

BX, BY = 32, 8  # threads per block in x (columns) and y (rows)
# the tile with its halo; plain int globals, so that the shared array's shape is a compile-time
# constant (numba-cuda on a real GPU rejects ``(BY + 2, BX + 2)``; the simulator accepts it)
TY = BY + 2
TX = BX + 2


@cuda.jit(cache=True)
def step_kernel(src: Any, dst: Any) -> None:
    tile = cuda.shared.array((TY, TX), numba.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i = cuda.blockIdx.y * BY + ty
    j = cuda.blockIdx.x * BX + tx
    rows, cols = src.shape
    inside = i < rows and j < cols
    if inside:
        tile[ty + 1, tx + 1] = src[i, j]
        if tx == 0 and j > 0:
            tile[ty + 1, 0] = src[i, j - 1]
        if tx == BX - 1 and j + 1 < cols:
            tile[ty + 1, BX + 1] = src[i, j + 1]
        if ty == 0 and i > 0:
            tile[0, tx + 1] = src[i - 1, j]
        if ty == BY - 1 and i + 1 < rows:
            tile[BY + 1, tx + 1] = src[i + 1, j]
    cuda.syncthreads()
    if inside and 0 < i < rows - 1 and 0 < j < cols - 1:
        up = tile[ty, tx + 1]
        down = tile[ty + 2, tx + 1]
        left = tile[ty + 1, tx]
        right = tile[ty + 1, tx + 2]
        dst[i, j] = 0.25 * (up + down + left + right)


def jacobi(grid: Any, iterations: int) -> Any:
    """``iterations`` steps of the device array ``grid``; the device array of the result."""
    a, b = grid, cuda.device_array_like(grid)
    b.copy_to_device(grid)  # the edges, which no step writes
    blocks = (tiles(grid.shape[1], BX), tiles(grid.shape[0], BY))
    for _ in range(iterations):
        step_kernel[blocks, (BX, BY)](a, b)
        a, b = b, a
    return a


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    grid = load(inputs)
    iterations = int(params["iterations"])
    # the CPU's steps are bit for bit these: a checkpoint of either device resumes on both
    ck = checkpoint.current("stencil2d", "cuda")
    with output_array(outputs, "grid", grid.shape) as out:
        if grid.size:
            saved = ck.resume()
            done = saved.step if saved is not None else 0
            d = cuda.to_device(saved.arrays["grid"] if saved is not None else grid)
            # one block (one call) unless progress is reported or checkpoints are taken
            for steps in ck.blocks(iterations, done):
                d = jacobi(d, steps)
                # the launches are queued, not run: the progress reported next, and the
                # block's time the next block is sized by, are the GPU's once it is done
                cuda.synchronize()
                done += steps
                ck.after_block(done, iterations, partial(_state, done, d))
            d.copy_to_host(out)
    return {"shape": list(grid.shape), "iterations": iterations}


def _state(done: int, grid: Any) -> checkpoint.State:
    return checkpoint.State(done, {"grid": grid.copy_to_host()})


def warm_cuda() -> None:
    jacobi(cuda.to_device(np.ones((3, 3))), 1)
