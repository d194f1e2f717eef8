"""matmul on a GPU: cuBLAS (through CuPy) where CuPy is installed, as the CPU version calls
BLAS; otherwise, or with ``STRATUS_CUDA_BLAS=0``, a numba kernel of 64x64 shared-memory tiles
of ``c``: 16x16 threads per block, each accumulating a 4x4 block of ``c`` in registers
(elements 16 apart, so that next-door threads read and write next-door columns), over
slices of 16 along ``k`` staged in shared memory with coalesced loads."""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np
from numba import cuda

from services.worker.kernels.base import Paths, output_array
from services.worker.kernels.cuda_launch import tiles
from services.worker.kernels.matmul import load

T = 16  # threads per block in x and in y
R = 4  # elements of c per thread in each direction
BM = T * R  # rows (and columns) of c per block: 64
BK = 16  # depth of one slice along k
LOADS = BM * BK // (T * T)  # elements of each tile one thread loads: 4


@cuda.jit(cache=True)
def matmul_kernel(a: Any, b: Any, c: Any) -> None:
    sa = cuda.shared.array((BK, BM), numba.float64)  # a's tile, transposed: sa[k, row]
    sb = cuda.shared.array((BK, BM), numba.float64)  # b's tile: sb[k, col]
    acc = cuda.local.array((R, R), numba.float64)
    ra = cuda.local.array(R, numba.float64)
    rb = cuda.local.array(R, numba.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * T + tx
    row0 = cuda.blockIdx.y * BM
    col0 = cuda.blockIdx.x * BM
    m, k = a.shape
    n = b.shape[1]
    for i in range(R):
        for j in range(R):
            acc[i, j] = 0.0
    for k0 in range(0, k, BK):
        for step in range(LOADS):
            e = tid + step * T * T
            r, kk = e // BK, e % BK  # a: consecutive threads, consecutive k (a row's run)
            ar, ak = row0 + r, k0 + kk
            sa[kk, r] = a[ar, ak] if ar < m and ak < k else 0.0
            kk, cc = e // BM, e % BM  # b: consecutive threads, consecutive columns
            bk, bc = k0 + kk, col0 + cc
            sb[kk, cc] = b[bk, bc] if bk < k and bc < n else 0.0
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(R):
                ra[i] = sa[kk, ty + i * T]
                rb[i] = sb[kk, tx + i * T]
            for i in range(R):
                for j in range(R):
                    acc[i, j] += ra[i] * rb[j]
        cuda.syncthreads()
    for i in range(R):
        for j in range(R):
            r, cc = row0 + ty + i * T, col0 + tx + j * T
            if r < m and cc < n:
                c[r, cc] = acc[i, j]


def _cupy() -> Any:
    """CuPy where it is installed and not switched off (``STRATUS_CUDA_BLAS=0``), else None."""
    if numba.config.ENABLE_CUDASIM or os.environ.get("STRATUS_CUDA_BLAS", "1") == "0":
        return None
    try:
        import cupy  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return cupy


def matmul_tiled(a: Any, b: Any, c: Any) -> None:
    """The numba kernel: device arrays in, device array out."""
    grid = (tiles(b.shape[1], BM), tiles(a.shape[0], BM))
    matmul_kernel[grid, (T, T)](a, b, c)


def matmul(a: Any, b: Any, c: Any) -> None:
    """c = a @ b on device arrays: cuBLAS where CuPy is there, else the numba kernel."""
    cupy = _cupy()
    if cupy is None:
        matmul_tiled(a, b, c)
    else:
        cupy.matmul(cupy.asarray(a), cupy.asarray(b), out=cupy.asarray(c))


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    a, b = load(inputs)
    shape = (a.shape[0], b.shape[1])
    with output_array(outputs, "c", shape) as out:
        if out.size == 0 or a.shape[1] == 0:
            out[...] = 0.0  # an empty sum
        else:
            dc = cuda.device_array(shape)
            matmul(cuda.to_device(a), cuda.to_device(b), dc)
            dc.copy_to_host(out)
    return {"shape": list(shape)}


def warm_cuda() -> None:
    a = cuda.to_device(np.ones((2, 2)))
    matmul(a, a, cuda.device_array((2, 2)))
    matmul_tiled(a, a, cuda.device_array((2, 2)))
