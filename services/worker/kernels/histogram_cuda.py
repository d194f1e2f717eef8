"""histogram on a GPU: a grid-stride loop over the data; each block counts into bins of its
own in shared memory (32-bit atomics, native in shared memory; one copy per warp where
they fit), then adds them to the global counts once.
More bins than fit in shared memory: global atomics. The bin of each value is NumPy's,
computed as on the CPU (``histogram.py``)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import cuda

from services.worker.kernels.base import Paths
from services.worker.kernels.cuda_launch import stride_blocks
from services.worker.kernels.histogram import converted_blocks, edges, open_data

THREADS = 256
SHARED_BINS = 8192  # int32 counts: 32 KiB of shared memory per block
BLOCK_LIMIT = 2**31 - 1  # values one block may count (int32 shared counts)


@cuda.jit(device=True)
def bin_of(v: float, edges: Any, lo: float, hi: float, bins: int, scale: float) -> int:
    """NumPy's bin of ``v``, or -1 when ``v`` is outside [lo, hi] or NaN (``scale``:
    ``bins / (hi - lo)``, computed once per thread)."""
    if not (v >= lo and v <= hi):
        return -1
    # the first guess multiplies as on the CPU (never off by more than one bin, corrected
    # below): a float64 division per value is a long instruction sequence on a GPU
    k = min(int((v - lo) * scale), bins - 1)
    if v < edges[k]:
        k -= 1
    elif v >= edges[k + 1] and k != bins - 1:
        k += 1
    return k


@cuda.jit(cache=True)
def shared_kernel(data: Any, edges: Any, lo: float, hi: float, counts: Any) -> None:
    local = cuda.shared.array(SHARED_BINS, numba.int32)
    bins = counts.shape[0]
    scale = bins / (hi - lo)
    # one copy of the bins per warp where they fit (up to 8): a run of equal values no
    # longer queues all the block's threads on one shared counter
    copies = max(1, min(cuda.blockDim.x // 32, SHARED_BINS // bins))
    mine = (cuda.threadIdx.x // 32) % copies * bins
    for b in range(cuda.threadIdx.x, copies * bins, cuda.blockDim.x):
        local[b] = 0
    cuda.syncthreads()
    i = cuda.grid(1)
    while i < data.shape[0]:
        k = bin_of(data[i], edges, lo, hi, bins, scale)
        if k >= 0:
            cuda.atomic.add(local, mine + k, 1)
        i += cuda.gridsize(1)
    cuda.syncthreads()
    for b in range(cuda.threadIdx.x, bins, cuda.blockDim.x):
        total = numba.int64(0)
        for c in range(copies):
            total += local[c * bins + b]
        if total:
            cuda.atomic.add(counts, b, total)


@cuda.jit(cache=True)
def global_kernel(data: Any, edges: Any, lo: float, hi: float, counts: Any) -> None:
    i = cuda.grid(1)
    scale = counts.shape[0] / (hi - lo)
    while i < data.shape[0]:
        k = bin_of(data[i], edges, lo, hi, counts.shape[0], scale)
        if k >= 0:
            cuda.atomic.add(counts, k, 1)
        i += cuda.gridsize(1)


def histogram(data: Any, bin_edges: Any, lo: float, hi: float) -> Any:
    """Counts (host, int64) of the device array ``data`` between ``bin_edges`` (host)."""
    bins = bin_edges.shape[0] - 1
    counts = cuda.to_device(np.zeros(bins, np.int64))
    kernel = shared_kernel if bins <= SHARED_BINS else global_kernel
    if data.shape[0]:
        n = data.shape[0]
        # enough blocks that no block counts more values than its int32 bins hold
        blocks = max(stride_blocks(n, THREADS), -(-n // (BLOCK_LIMIT - THREADS)))
        kernel[blocks, THREADS](data, cuda.to_device(bin_edges), lo, hi, counts)
    return counts.copy_to_host()


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    data = open_data(inputs)
    lo, hi = (float(v) for v in params["range"])
    bin_edges = edges(int(params["bins"]), lo, hi)  # refuses what NumPy refuses
    return {"counts": histogram(upload(data), bin_edges, lo, hi).tolist()}


def upload(data: Any) -> Any:
    """``data`` as a float64 device array, converted on the host block by block."""
    device = cuda.device_array(data.shape[0], np.float64)
    start = 0
    for block in converted_blocks(data):
        device[start : start + block.shape[0]].copy_to_device(block)
        start += block.shape[0]
    return device


def warm_cuda() -> None:
    data = cuda.to_device(np.ones(2))
    histogram(data, edges(2, 0.0, 2.0), 0.0, 2.0)
    histogram(data, edges(SHARED_BINS + 1, 0.0, 2.0), 0.0, 2.0)
