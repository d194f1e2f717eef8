"""Monte Carlo pi on a GPU: one xoroshiro128+ stream per thread (``numba.cuda.random``), a
per-thread count, and a block-level reduction in shared memory."""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import cuda
from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_uniform_float64

from services.worker.kernels.base import Paths
from services.worker.kernels.montecarlo import summarize

THREADS_PER_BLOCK = 128
MAX_BLOCKS = 4096


@cuda.jit(cache=True)
def _hits_kernel(states: Any, samples: int, block_hits: Any) -> None:
    shared = cuda.shared.array(THREADS_PER_BLOCK, numba.int64)
    tid = cuda.threadIdx.x
    gid = cuda.grid(1)
    nthreads = cuda.gridsize(1)
    count = 0
    i = gid
    while i < samples:  # grid-stride loop over the samples
        x = xoroshiro128p_uniform_float64(states, gid)
        y = xoroshiro128p_uniform_float64(states, gid)
        if x * x + y * y <= 1.0:
            count += 1
        i += nthreads
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


def _blocks(samples: int) -> int:
    if numba.config.ENABLE_CUDASIM:
        return 1  # the simulator runs a few thousand threads a second
    per_thread = 64
    return max(1, min(MAX_BLOCKS, math.ceil(samples / (THREADS_PER_BLOCK * per_thread))))


def hits(samples: int, seed: int) -> int:
    blocks = _blocks(samples)
    states = create_xoroshiro128p_states(blocks * THREADS_PER_BLOCK, seed=seed)
    block_hits = cuda.device_array(blocks, dtype=np.int64)
    _hits_kernel[blocks, THREADS_PER_BLOCK](states, samples, block_hits)
    return int(block_hits.copy_to_host().sum())


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    samples = int(params["samples"])
    return summarize(hits(samples, int(params.get("seed", 0))), samples)


def warm_cuda() -> None:
    hits(1, 0)
