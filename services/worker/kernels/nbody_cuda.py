"""nbody on a GPU: tiled all-pairs. Each block stages a tile of bodies (positions and
masses) in shared memory, every thread accumulates its own body's acceleration over the
tile, then the next tile; kick and drift are elementwise kernels. Bodies live on the device
as 3xn coordinate arrays (coalesced) for the whole run."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numba
import numpy as np
from numba import cuda

from services.worker import checkpoint
from services.worker.kernels.base import Paths, output_array
from services.worker.kernels.cuda_launch import stride_blocks, tiles
from services.worker.kernels.nbody import load

TPB = 128


@cuda.jit(cache=True)
def pairs_kernel(pos: Any, m: Any, eps2: float, out: Any, potential: bool) -> None:
    """``out[:, i]``: the acceleration of body i or, with ``potential``, ``out[0, i]`` =
    Σ_j m_j / sqrt(r² + eps²) (pairs at distance zero left out)."""
    sh = cuda.shared.array((4, TPB), numba.float64)
    tx = cuda.threadIdx.x
    i = cuda.grid(1)
    n = pos.shape[1]
    xi = pos[0, i] if i < n else 0.0
    yi = pos[1, i] if i < n else 0.0
    zi = pos[2, i] if i < n else 0.0
    ax = ay = az = 0.0
    for t in range((n + TPB - 1) // TPB):
        j = t * TPB + tx
        for c in range(3):
            sh[c, tx] = pos[c, j] if j < n else 0.0
        sh[3, tx] = m[j] if j < n else 0.0
        cuda.syncthreads()
        for k in range(min(TPB, n - t * TPB)):
            dx = sh[0, k] - xi
            dy = sh[1, k] - yi
            dz = sh[2, k] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 > 0.0:
                if potential:
                    ax += sh[3, k] / math.sqrt(r2)
                else:
                    w = sh[3, k] / (r2 * math.sqrt(r2))
                    ax += dx * w
                    ay += dy * w
                    az += dz * w
        cuda.syncthreads()
    if i < n:
        out[0, i] = ax
        out[1, i] = ay
        out[2, i] = az


@cuda.jit(cache=True)
def update_kernel(target: Any, rate: Any, h: float) -> None:
    """``target += h * rate`` on 3xn arrays (kick: velocities; drift: positions)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < target.shape[1]:
        for c in range(3):
            target[c, i] += h * rate[c, i]
        i += stride


def _pairs(pos: Any, m: Any, eps2: float, out: Any, potential: bool) -> None:
    pairs_kernel[tiles(pos.shape[1], TPB), TPB](pos, m, eps2, out, potential)


def _update(target: Any, rate: Any, h: float) -> None:
    update_kernel[stride_blocks(target.shape[1], TPB), TPB](target, rate, h)


def _energy(pos: Any, vel: Any, m: Any, eps2: float, scratch: Any) -> float:
    _pairs(pos, m, eps2, scratch, True)
    phi, v, mass = scratch.copy_to_host()[0], vel.copy_to_host(), m.copy_to_host()
    return float(0.5 * np.sum(mass * np.sum(v * v, axis=0)) - 0.5 * np.sum(mass * phi))


def leapfrog(bodies: Any, steps: int, dt: float, eps2: float) -> tuple[Any, float, float]:
    """The bodies (n x 7, host) after ``steps`` kick-drift-kick steps; the energies. The
    steps run in blocks between progress reports and checkpoints, from the job's checkpoint
    when it has one (of this device only: the CPU's arithmetic differs in rounding)."""
    ck = checkpoint.current("nbody", "cuda", portable=False)
    saved = ck.resume()
    if saved is None:
        pos = cuda.to_device(np.ascontiguousarray(bodies[:, 0:3].T))
        vel = cuda.to_device(np.ascontiguousarray(bodies[:, 3:6].T))
        m = cuda.to_device(np.ascontiguousarray(bodies[:, 6]))
        acc = cuda.device_array_like(pos)
        e0 = _energy(pos, vel, m, eps2, acc)
        _pairs(pos, m, eps2, acc, False)
        done = 0
    else:
        a, done, e0 = saved.arrays, saved.step, float(saved.numbers["energy_initial"])
        pos, vel, m, acc = (cuda.to_device(a[k]) for k in ("pos", "vel", "m", "acc"))
    for n in ck.blocks(steps, done):
        for _ in range(n):
            _update(vel, acc, 0.5 * dt)
            _update(pos, vel, dt)
            _pairs(pos, m, eps2, acc, False)
            _update(vel, acc, 0.5 * dt)
        cuda.synchronize()  # the block's launches done: what the progress then reported says
        done += n
        ck.after_block(done, steps, partial(_state, done, (pos, vel, m, acc), e0))
    e1 = _energy(pos, vel, m, eps2, acc)
    out = np.empty_like(bodies)
    out[:, 0:3] = pos.copy_to_host().T
    out[:, 3:6] = vel.copy_to_host().T
    out[:, 6] = bodies[:, 6]
    return out, e0, e1


def _state(done: int, arrays: tuple[Any, ...], e0: float) -> checkpoint.State:
    names = ("pos", "vel", "m", "acc")
    host = {k: a.copy_to_host() for k, a in zip(names, arrays, strict=True)}
    return checkpoint.State(done, host, {"energy_initial": e0})


def run_cuda(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    bodies = load(inputs)
    eps2 = float(params["softening"]) ** 2
    e0 = e1 = 0.0
    with output_array(outputs, "bodies", bodies.shape) as out:
        if bodies.shape[0]:
            out[...], e0, e1 = leapfrog(bodies, int(params["steps"]), float(params["dt"]), eps2)
    return {"energy_initial": e0, "energy_final": e1, "n": int(bodies.shape[0])}


def warm_cuda() -> None:
    leapfrog(np.ones((2, 7)), 1, 0.1, 0.01)
