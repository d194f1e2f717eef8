"""``bench/kernels.py --device cuda``: the CUDA kernels on a GPU, timed on device arrays
(transfers excluded), against the card's measured device-to-device copy bandwidth
(saxpy, stencil2d, histogram) and its cuBLAS dgemm rate (matmul, nbody) through CuPy or
PyTorch where one is installed. Where there is no GPU it says so and exits 0; under the
simulator (``NUMBA_ENABLE_CUDASIM=1``) it runs tiny sizes to check the code path only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

Sizes = dict[str, int]
FULL: Sizes = {"n": 2**26, "side": 8192, "its": 20, "m": 4096, "bodies": 65536, "mc": 10**9}
QUICK: Sizes = {"n": 2**24, "side": 4096, "its": 10, "m": 2048, "bodies": 16384, "mc": 10**8}
SIMULATED: Sizes = {"n": 1000, "side": 20, "its": 1, "m": 16, "bodies": 40, "mc": 1000}


def gpu_time(fn: Callable[[], object], repeat: int) -> float:
    from numba import cuda

    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cublas_dgemm(m: int, repeat: int) -> tuple[str, float] | None:
    """(library, GFLOP/s) of a float64 m x m product, or None without CuPy or PyTorch."""
    try:
        import cupy  # type: ignore[import-not-found]

        a = cupy.random.random((m, m))

        def run() -> object:
            return a @ a

        return "cupy", 2 * m**3 / gpu_time(run, repeat) / 1e9
    except ImportError:
        pass
    try:
        import torch  # type: ignore[import-not-found]

        t = torch.rand((m, m), dtype=torch.float64, device="cuda")
        return "torch", 2 * m**3 / gpu_time(lambda: t @ t, repeat) / 1e9
    except (ImportError, RuntimeError, AssertionError):
        return None


def copy_bandwidth(n: int, repeat: int) -> float:
    from numba import cuda

    src, dst = cuda.to_device(np.ones(n)), cuda.device_array(n)
    return 16 * n / gpu_time(lambda: dst.copy_to_device(src), repeat) / 1e9


def measure(s: Sizes, repeat: int) -> list[dict[str, Any]]:
    from numba import cuda

    from services.worker.kernels import (
        histogram_cuda,
        matmul_cuda,
        montecarlo_cuda,
        nbody_cuda,
        saxpy_cuda,
        stencil2d_cuda,
    )

    rng = np.random.default_rng(0)
    n, side, its, m, nb = s["n"], s["side"], s["its"], s["m"], s["bodies"]
    x, y, out = cuda.to_device(rng.random(n)), cuda.to_device(rng.random(n)), cuda.device_array(n)
    grid = cuda.to_device(rng.random((side, side)))
    a, b, c = (
        cuda.to_device(rng.random((m, m))),
        cuda.to_device(rng.random((m, m))),
        cuda.device_array((m, m)),
    )
    pos, mass = cuda.to_device(rng.random((3, nb))), cuda.to_device(rng.random(nb))
    acc = cuda.device_array((3, nb))
    bin_edges = histogram_cuda.edges(1000, 0.0, 1.0)
    t = {
        "saxpy": gpu_time(lambda: saxpy_cuda.saxpy(2.0, x, y, out), repeat),
        "stencil2d": gpu_time(lambda: stencil2d_cuda.jacobi(grid, its), repeat) / its,
        "histogram": gpu_time(lambda: histogram_cuda.histogram(x, bin_edges, 0.0, 1.0), repeat),
        "matmul": gpu_time(lambda: matmul_cuda.matmul(a, b, c), repeat),
        "nbody": gpu_time(lambda: nbody_cuda._pairs(pos, mass, 1e-4, acc, False), repeat),
        "montecarlo_pi": gpu_time(lambda: montecarlo_cuda.hits(s["mc"], 1), repeat),
    }
    work = {  # (amount per run in the unit's numerator, unit, limit it is compared with)
        "saxpy": (24 * n / 1e9, "GB/s", "copy"),
        "stencil2d": (16 * (side - 2) ** 2 / 1e9, "GB/s", "copy"),
        "histogram": (8 * n / 1e9, "GB/s", "copy"),
        "matmul": (2 * m**3 / 1e9, "GFLOP/s", "dgemm"),
        "nbody": (20 * nb * nb / 1e9, "GFLOP/s", "dgemm"),
        "montecarlo_pi": (s["mc"] / 1e6, "Msamples/s", ""),
    }
    return [
        {
            "kernel": k,
            "seconds": t[k],
            "rate": work[k][0] / t[k],
            "unit": work[k][1],
            "limit": work[k][2],
        }
        for k in t
    ]


def run_cuda_bench(quick: bool, repeat: int) -> int:
    from numba import cuda

    simulated = bool(numba.config.ENABLE_CUDASIM)
    if not simulated and not cuda.is_available():
        print("no CUDA device here (numba.cuda.is_available() is false): nothing to measure")
        return 0
    from bench.kernels import write

    sizes = SIMULATED if simulated else (QUICK if quick else FULL)
    device = "simulator" if simulated else cuda.current_context().device.name
    device = device.decode() if isinstance(device, bytes) else str(device)
    copy = copy_bandwidth(sizes["n"], repeat)
    blas = None if simulated else cublas_dgemm(sizes["m"], repeat)
    limits = {"copy": copy, "dgemm": blas[1] if blas else None}
    rows = measure(sizes, repeat)
    print(f"device: {device}; copy {copy:.1f} GB/s; dgemm {blas or 'no CuPy/PyTorch'}")
    for r in rows:
        lim = limits.get(r["limit"])
        r["fraction_of_limit"] = r["rate"] / lim if lim else None
        frac = f"{r['fraction_of_limit']:.0%}" if lim else "-"
        print(f"{r['kernel']:<14}{r['seconds']:>12.6f} s{r['rate']:>12.1f} {r['unit']:<8}{frac:>6}")
    report = {"device": device, "simulated": simulated, "sizes": sizes, "limits": limits}
    write({**report, "kernels": rows}, "kernels-cuda.json")
    return 0
