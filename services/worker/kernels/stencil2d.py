"""stencil2d: Jacobi heat steps on a 2-D float64 grid, edges fixed.

Each step is ``v[1:-1,1:-1] = 0.25*(u[:-2,1:-1] + u[2:,1:-1] + u[1:-1,:-2] + u[1:-1,2:])``
on a copy of the previous step ``u``, summed in that order, so the result is bit-identical
to the NumPy expression. Two buffers take turns; the one that receives the last step is the
memory-mapped output, so the result is written once, in place. Several steps are computed
per pass over the grid, tile by tile (``jacobi``), each value from the same values as
step by step, so the bits are the same.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker import checkpoint
from services.worker.kernels.base import Kernel, Paths, load_input, output_array

STEPS_PER_PASS = 16  # steps per pass over the grid at most
TILE_COLUMNS = 1024  # a tile's columns: its steps' three rows each (380 KiB) stay in L2
BAND_ROWS = 128  # rows of a tile at least, where the grid is cut into bands of rows too
TILES = 16  # tiles wanted at least (for the threads), where the grid is large enough
MIN_TILES = 4  # fewer tiles than this: a sweep per step, its rows shared by the threads


@numba.njit(cache=True, nogil=True)
def _row(up: Any, mid: Any, down: Any, out: Any) -> None:
    # rows as 1-D slices and a loop from the first element: this is the form that vectorises
    for j in range(1, mid.shape[0] - 1):
        out[j] = 0.25 * (up[j] + down[j] + mid[j - 1] + mid[j + 1])


@numba.njit(cache=True, nogil=True)
def jacobi_steps(src: Any, dst: Any, iterations: int) -> None:
    """``jacobi`` one step per pass over the grid (the reference the tiled passes are
    tested against)."""
    rows = src.shape[0]
    a, b = src, dst
    for _ in range(iterations):
        _sweep(a, b, rows)
        a, b = b, a


@numba.njit(cache=True, parallel=True, nogil=True)
def _sweep(a: Any, b: Any, rows: int) -> None:
    for i in prange(1, rows - 1):
        _row(a[i - 1], a[i], a[i + 1], b[i])


@numba.njit(cache=True, nogil=True)
def _level(a: Any, ring: Any, s: int, i: int, e0: int, e1: int) -> Any:
    """Row ``i`` at step ``s`` of the tile, columns ``e0:e1``: ``a``'s row at step 0 and on
    the grid's first and last rows (fixed), else its slot in ``ring``."""
    if s == 0 or i == 0 or i == a.shape[0] - 1:
        return a[i, e0:e1]
    return ring[s - 1, i % 3, : e1 - e0]


@numba.njit(cache=True, nogil=True)
def _tile(a: Any, b: Any, depth: int, r0: int, r1: int, c0: int, c1: int, ring: Any) -> None:
    """Step ``depth`` of rows ``r0:r1`` x columns ``c0:c1`` into ``b`` from step 0 in ``a``,
    the steps between kept for three rows each in ``ring`` (cache-sized). A wavefront down
    the rows: at position ``p``, row ``p - s + 1`` at step ``s`` for each ``s``, which needs
    rows ``p - s`` to ``p - s + 2`` at step ``s - 1``, the last just computed. Step ``s`` is
    computed over the tile widened by ``depth - s`` rows and columns each side (where the
    grid has them), the values the next steps need; the widening's outer columns go wrong
    one more each step and are never used. Each value is computed by ``_row``, from the
    same values as a step-by-step sweep: the same bits."""
    rows, cols = a.shape
    e0, e1 = max(0, c0 - depth), min(cols, c1 + depth)
    width = e1 - e0
    for p in range(max(1, r0 - depth + 1), r1 + depth - 1):
        for s in range(1, depth + 1):
            i = p - s + 1
            if i < max(1, r0 - depth + s) or i >= min(rows - 1, r1 + depth - s):
                continue
            up = _level(a, ring, s - 1, i - 1, e0, e1)
            mid = _level(a, ring, s - 1, i, e0, e1)
            down = _level(a, ring, s - 1, i + 1, e0, e1)
            if s < depth:
                out = ring[s - 1, i % 3, :width]
                out[0] = a[i, e0]  # the grid's edge where e0 == 0 (else never used)
                out[width - 1] = a[i, e1 - 1]
                _row(up, mid, down, out)
            else:  # columns c0 - 1 to c1 (inclusive) of each: out[1:-1] is c0:c1
                lo, hi = c0 - 1 - e0, c1 + 1 - e0
                _row(up[lo:hi], mid[lo:hi], down[lo:hi], b[i, c0 - 1 : c1 + 1])


@numba.njit(cache=True, parallel=True, nogil=True)
def _tiled_pass(a: Any, b: Any, depth: int, bands: int, blocks: int) -> None:
    """``depth`` steps from ``a`` into ``b``'s interior, in ``bands`` x ``blocks`` tiles."""
    rows, cols = a.shape
    for t in prange(bands * blocks):
        band, block = t // blocks, t % blocks
        r0, r1 = 1 + band * (rows - 2) // bands, 1 + (band + 1) * (rows - 2) // bands
        c0, c1 = 1 + block * (cols - 2) // blocks, 1 + (block + 1) * (cols - 2) // blocks
        ring = np.zeros((max(1, depth - 1), 3, c1 - c0 + 2 * depth))
        _tile(a, b, depth, r0, r1, c0, c1, ring)


@numba.njit(cache=True, nogil=True)
def jacobi(src: Any, dst: Any, iterations: int) -> None:
    """``iterations`` steps from ``src`` (edges included) ping-ponging with ``dst``; both
    start as copies of the grid. The last step lands in ``dst`` if ``iterations`` is odd
    (the other buffer then holds an earlier step, its edges the grid's).

    Temporal blocking: passes of up to ``STEPS_PER_PASS`` steps each over tiles of
    ``TILE_COLUMNS`` columns (``_tile``), so the grid is read and written once per pass, not
    once per step; each pass lands in the other buffer, so there is an odd number of passes
    exactly when ``iterations`` is odd."""
    rows, cols = src.shape
    if rows < 3 or cols < 3 or iterations <= 0:
        return
    passes = (iterations + STEPS_PER_PASS - 1) // STEPS_PER_PASS
    if passes % 2 != iterations % 2:
        passes += 1  # never more than ``iterations``: then the parities agree
    blocks = (cols - 2 + TILE_COLUMNS - 1) // TILE_COLUMNS
    wanted = (TILES + blocks - 1) // blocks
    bands = max(1, min(wanted, (rows - 2) // BAND_ROWS))
    if bands * blocks < MIN_TILES:  # a small grid: too few tiles to keep the threads busy
        jacobi_steps(src, dst, iterations)
        return
    a, b = src, dst
    done = 0
    for k in range(passes):
        depth = (iterations - done) // (passes - k)
        _tiled_pass(a, b, depth, bands, blocks)
        done += depth
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
