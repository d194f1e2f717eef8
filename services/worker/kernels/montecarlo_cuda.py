"""Monte Carlo pi on a GPU: one stream of ``montecarlo.STREAM`` points per thread (a
grid-stride loop over the streams), each with its own xoroshiro128+ generator seeded on the
device through splitmix64 by ``(seed, stream)``, a per-thread count, and a block-level
reduction in shared memory.

The generator is the one of ``numba.cuda.random`` (xoroshiro128+, doubles from the top 53
bits), but its states are seeded in the kernel: ``create_xoroshiro128p_states`` seeds them on
the host by jump-ahead, about 0.1 s for the half a million threads of 10^9 samples, longer
than the sampling itself on an H200. Seeding per stream, as the CPU version does, also gives
the CPU's counts exactly: an estimate depends on ``samples`` and ``seed``, never the device.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import cuda

from services.worker.kernels.base import Paths
from services.worker.kernels.montecarlo import (
    STREAM,
    hits_resumable,
    stream_hits_py,
    summarize,
)

THREADS_PER_BLOCK = 128
MAX_BLOCKS = 4096

stream_hits = cuda.jit(device=True)(stream_hits_py)


@cuda.jit(cache=True)
def _hits_kernel(samples: int, seed: int, first: int, end: int, block_hits: Any) -> None:
    """The hits of the streams ``first`` to ``end``, per block."""
    shared = cuda.shared.array(THREADS_PER_BLOCK, numba.int64)
    tid = cuda.threadIdx.x
    count = 0
    s = first + cuda.grid(1)
    while s < end:  # grid-stride loop over the streams
        count += stream_hits(seed, s, min(STREAM, samples - s * STREAM))
        s += cuda.gridsize(1)
    shared[tid] = count
    cuda.syncthreads()
    step = THREADS_PER_BLOCK // 2
    while step > 0:
        if tid < step:
            shared[tid] += shared[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        block_hits[cuda.blockIdx.x] = shared[0]


def _blocks(streams: int) -> int:
    if numba.config.ENABLE_CUDASIM:
        return 1  # the simulator runs a few thousand threads a second
    return max(1, min(MAX_BLOCKS, math.ceil(streams / THREADS_PER_BLOCK)))


def hits_of(samples: int, seed: int, first: int, count: int) -> int:
    """Hits of the streams ``first`` to ``first + count`` (``montecarlo._hits_of``)."""
    blocks = _blocks(count)
    block_hits = cuda.device_array(blocks, dtype=np.int64)
    _hits_kernel[blocks, THREADS_PER_BLOCK](samples, seed, first, first + count, block_hits)
    return int(block_hits.copy_to_host().sum())


def hits(samples: int, seed: int) -> int:
    return hits_of(samples, seed, 0, math.ceil(samples / STREAM))


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    samples = int(params["samples"])
    seed = int(params.get("seed", 0))
    # in blocks between progress reports and checkpoints, which the CPU's resume as well
    return summarize(hits_resumable(samples, seed, hits_of, "cuda"), samples)


def warm_cuda() -> None:
    hits(1, 0)
