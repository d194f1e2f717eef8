"""The contract's NumPy expressions (``API.md``), the reference every kernel is tested
against, and the awkward cases they are tested on."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

RTOL = 1e-9  # the contract: agree with the NumPy expressions to 1e-9 relative


def saxpy(a: float, x: Array, y: Array) -> Array:
    return a * x + y


def matmul(a: Array, b: Array) -> Array:
    return a @ b


def stencil2d(grid: Array, iterations: int) -> Array:
    u = grid
    for _ in range(iterations):
        v = u.copy()
        v[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
        u = v
    return u


def _pairs(pos: Array, eps2: float) -> tuple[Array, Array]:
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = r_j - r_i
    r2 = (d**2).sum(axis=-1) + eps2
    return d, r2


def accelerations(pos: Array, m: Array, eps2: float) -> Array:
    d, r2 = _pairs(pos, eps2)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(r2 > 0, m[None, :] / (r2 * np.sqrt(r2)), 0.0)
    acc: Array = (d * w[:, :, None]).sum(axis=1)
    return acc


def energy(pos: Array, vel: Array, m: Array, eps2: float) -> float:
    _, r2 = _pairs(pos, eps2)
    with np.errstate(divide="ignore"):
        inv = np.where(r2 > 0, 1.0 / np.sqrt(r2), 0.0)
    potential = -0.5 * float((m[:, None] * m[None, :] * inv).sum())
    return 0.5 * float((m * (vel**2).sum(axis=1)).sum()) + potential


def nbody(bodies: Array, steps: int, dt: float, softening: float) -> tuple[Array, float, float]:
    pos, vel, m = bodies[:, 0:3].copy(), bodies[:, 3:6].copy(), bodies[:, 6].copy()
    eps2 = softening**2
    e0 = energy(pos, vel, m, eps2)
    acc = accelerations(pos, m, eps2)
    for _ in range(steps):
        vel += 0.5 * dt * acc
        pos += dt * vel
        acc = accelerations(pos, m, eps2)
        vel += 0.5 * dt * acc
    return np.hstack([pos, vel, m[:, None]]), e0, energy(pos, vel, m, eps2)


def histogram(data: Array, bins: int, lo: float, hi: float) -> list[int]:
    counts: Array = np.histogram(data, bins, (lo, hi))[0]
    return [int(c) for c in counts]


def awkward_histogram_data(rng: np.random.Generator, bins: int, lo: float, hi: float) -> Array:
    """Random values plus every edge, its neighbours, both ends, outside values and NaN."""
    edges = np.linspace(lo, hi, bins + 1)
    near = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    special = [lo, hi, lo - 1, hi + 1, np.nan, np.inf, -np.inf, 0.0, -0.0]
    spread = rng.uniform(lo - (hi - lo) * 0.1, hi + (hi - lo) * 0.1, 997)
    return np.concatenate([spread, near, special])


def bodies(rng: np.random.Generator, n: int) -> Array:
    b = rng.normal(size=(n, 7))
    b[:, 3:6] *= 0.1
    b[:, 6] = rng.uniform(0.5, 1.5, n)
    return b
