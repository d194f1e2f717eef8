"""Monte Carlo estimate of pi: the fraction of uniform points in the unit quarter circle.

The samples are cut into streams of ``STREAM`` points; stream ``s`` draws from its own
xoroshiro128+ generator seeded (through splitmix64) by ``(seed, s)``, and the streams run in
parallel. The estimate depends on ``samples`` and ``seed`` only, never on the thread count or
the device: the CUDA version (``montecarlo_cuda``) runs the same functions, one stream per GPU
thread, and returns the same counts. ``STREAM`` is small enough (4,096 points) to give a GPU
a few hundred thousand streams for 10^9 samples; seeding one costs two splitmix64 steps.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker import checkpoint
from services.worker.kernels.base import Kernel, Paths

STREAM = 2**12
U53 = 2.0**-53  # 53 random bits -> a double in [0, 1)


def stream_hits_py(seed: int, stream: int, count: int) -> int:
    """Hits among ``count`` points of stream ``stream``: splitmix64 seeds a xoroshiro128+
    generator, each point takes two doubles in [0, 1) from the top 53 bits of its outputs.
    Plain Python compiled twice, for the CPU (``_stream_hits``) and as a CUDA device function
    (``montecarlo_cuda``): one body, no calls, so both compile it alike and agree bit for bit."""
    z = np.uint64(seed) ^ (np.uint64(stream) * np.uint64(0xD1B54A32D192ED03))
    z = z + np.uint64(0x9E3779B97F4A7C15)  # splitmix64, twice
    x = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    s0 = x ^ (x >> np.uint64(31))
    z = z + np.uint64(0x9E3779B97F4A7C15)
    x = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    s1 = x ^ (x >> np.uint64(31))
    hits = 0
    for _ in range(count):
        r = s0 + s1  # xoroshiro128+ (24, 16, 37)
        s1 ^= s0
        s0 = ((s0 << np.uint64(24)) | (s0 >> np.uint64(40))) ^ s1 ^ (s1 << np.uint64(16))
        s1 = (s1 << np.uint64(37)) | (s1 >> np.uint64(27))
        u = np.int64(r >> np.uint64(11)) * U53  # 53 bits: exact as int64
        r = s0 + s1
        s1 ^= s0
        s0 = ((s0 << np.uint64(24)) | (s0 >> np.uint64(40))) ^ s1 ^ (s1 << np.uint64(16))
        s1 = (s1 << np.uint64(37)) | (s1 >> np.uint64(27))
        v = np.int64(r >> np.uint64(11)) * U53
        if u * u + v * v <= 1.0:
            hits += 1
    return hits


_stream_hits = numba.njit(cache=True, nogil=True)(stream_hits_py)


@numba.njit(cache=True, parallel=True, nogil=True)
def _hits(samples: int, seed: int) -> int:
    hits = 0
    for s in prange((samples + STREAM - 1) // STREAM):
        hits += _stream_hits(seed, s, min(STREAM, samples - s * STREAM))
    return hits


@numba.njit(cache=True, parallel=True, nogil=True)
def _hits_of(samples: int, seed: int, first: int, count: int) -> int:
    """Hits of the streams ``first`` to ``first + count`` (a block of ``_hits``)."""
    hits = 0
    for k in prange(count):
        s = first + k
        hits += _stream_hits(seed, s, min(STREAM, samples - s * STREAM))
    return hits


def estimate(samples: int, seed: int) -> dict[str, Any]:
    """The estimate, its streams run in blocks between progress reports and checkpoints (one
    block when nobody asks): integer counts, so the blocks change nothing in the result. A
    checkpoint holds the hits so far and the next stream: the generator state, since each
    stream seeds its own generator from ``(seed, stream)``."""
    return summarize(hits_resumable(samples, seed, _hits_of, "cpu"), samples)


def hits_resumable(samples: int, seed: int, hits_of: Any, device: str) -> int:
    """The hits of every stream, ``hits_of(samples, seed, first, count)`` a block at a time,
    from the job's checkpoint when it has one (the counts are the same on every device)."""
    ck = checkpoint.current("montecarlo_pi", device)
    streams = (samples + STREAM - 1) // STREAM
    saved = ck.resume()
    hits, first = (0, 0) if saved is None else (int(saved.numbers["hits"]), saved.step)
    for count in ck.blocks(streams, first, first=64):
        hits += int(hits_of(samples, seed, first, count))
        first += count
        numbers = {"hits": hits, "samples": samples, "seed": seed}
        ck.after_block(first, streams, partial(checkpoint.State, first, {}, numbers))
    return hits


def summarize(hits: int, samples: int) -> dict[str, Any]:
    p = hits / samples
    return {
        "estimate": 4.0 * p,
        "samples": samples,
        "std_error": 4.0 * math.sqrt(max(p * (1 - p), 1e-300) / samples),
    }


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    return estimate(int(params["samples"]), int(params.get("seed", 0)))


def warm() -> None:
    _hits(16, 1)
    _hits_of(16, 1, 0, 1)


KERNEL = Kernel("montecarlo_pi", run_cpu, warm, cuda="services.worker.kernels.montecarlo_cuda")
