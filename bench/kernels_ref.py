"""NumPy references of ``bench/kernels.py``: the contract's expressions, written as a NumPy
user would (chunked where the plain broadcast would not fit in memory)."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def numpy_stencil(grid: Array, iterations: int) -> Array:
    u = grid
    for _ in range(iterations):
        v = u.copy()
        v[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
        u = v
    return u


def numpy_accelerations(pos: Array, m: Array, eps2: float, block: int = 256) -> Array:
    """All-pairs accelerations of ``pos`` (n x 3), ``block`` bodies at a time."""
    acc = np.empty_like(pos)
    for start in range(0, pos.shape[0], block):
        d = pos[None, :, :] - pos[start : start + block, None, :]
        r2 = (d * d).sum(axis=-1) + eps2
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(r2 > 0, m / (r2 * np.sqrt(r2)), 0.0)
        acc[start : start + block] = (d * w[:, :, None]).sum(axis=1)
    return acc


def numpy_pi(samples: int, seed: int, chunk: int = 2**22) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        x, y = rng.random(k), rng.random(k)
        hits += int(np.count_nonzero(x * x + y * y <= 1.0))
    return 4.0 * hits / samples
