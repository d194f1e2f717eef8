"""Monte Carlo estimate of pi: the fraction of uniform points in the unit quarter circle."""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _hits(samples: int, seed: int) -> int:
    np.random.seed(seed)
    hits = 0
    for _ in range(samples):
        x = np.random.random()
        y = np.random.random()
        if x * x + y * y <= 1.0:
            hits += 1
    return hits


def estimate(samples: int, seed: int) -> dict[str, Any]:
    return summarize(_hits(samples, seed), samples)


def summarize(hits: int, samples: int) -> dict[str, Any]:
    p = hits / samples
    return {
        "estimate": 4.0 * p,
        "samples": samples,
        "std_error": 4.0 * math.sqrt(max(p * (1 - p), 1e-300) / samples),
    }


def run_cpu(
    params: dict[str, Any], _inputs: dict[str, str], _outputs: dict[str, str]
) -> dict[str, Any]:
    return estimate(int(params["samples"]), int(params.get("seed", 0)))


def warm() -> None:
    _hits(16, 1)
