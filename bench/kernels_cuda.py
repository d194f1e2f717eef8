"""``bench/kernels.py --device cuda``: the CUDA kernels on a GPU, timed on device arrays
(transfers excluded), against the card's STREAM triad bandwidth measured by a numba kernel
(saxpy, stencil2d, histogram) and its cuBLAS dgemm rate (matmul, nbody) through CuPy or
PyTorch where one is installed, and against CuPy running the contract's NumPy expression on
the same arrays (the GPU's counterpart of the NumPy reference); ``matmul`` is the kernel's
default path (cuBLAS where CuPy is installed), ``matmul_numba_tiles`` the numba kernel.
Where there is no GPU it says so and exits 0; under the simulator
(``NUMBA_ENABLE_CUDASIM=1``) it runs tiny sizes to check the code path only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import cuda

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


@cuda.jit  # type: ignore[untyped-decorator]
def triad_kernel(a: Any, b: Any, c: Any, s: float) -> None:
    i = cuda.grid(1)
    while i < a.shape[0]:
        a[i] = b[i] + s * c[i]
        i += cuda.gridsize(1)


def triad_bandwidth(n: int, repeat: int) -> float:
    """STREAM triad ``a = b + s * c`` in a numba grid-stride kernel (24 bytes per element):
    the GPU's counterpart of the CPU bench's triad, the limit of the memory-bound kernels."""
    from services.worker.kernels.cuda_launch import stride_blocks

    b, c, a = cuda.to_device(np.ones(n)), cuda.to_device(np.ones(n)), cuda.device_array(n)
    blocks = stride_blocks(n, 256)
    return 24 * n / gpu_time(lambda: triad_kernel[blocks, 256](a, b, c, 3.0), repeat) / 1e9


def measure(s: Sizes, repeat: int) -> list[dict[str, Any]]:
    from numba import cuda

    from services.worker.kernels import (
        histogram,
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
    bin_edges = histogram.edges(1000, 0.0, 1.0)
    t = {
        "saxpy": gpu_time(lambda: saxpy_cuda.saxpy(2.0, x, y, out), repeat),
        "stencil2d": gpu_time(lambda: stencil2d_cuda.jacobi(grid, its), repeat) / its,
        "histogram": gpu_time(lambda: histogram_cuda.histogram(x, bin_edges, 0.0, 1.0), repeat),
        "matmul": gpu_time(lambda: matmul_cuda.matmul(a, b, c), repeat),
        "matmul_numba_tiles": gpu_time(lambda: matmul_cuda.matmul_tiled(a, b, c), repeat),
        "nbody": gpu_time(lambda: nbody_cuda._pairs(pos, mass, 1e-4, acc, False), repeat),
        "montecarlo_pi": gpu_time(lambda: montecarlo_cuda.hits(s["mc"], 1), repeat),
    }
    work = {  # (amount per run in the unit's numerator, unit, limit it is compared with)
        "saxpy": (24 * n / 1e9, "GB/s", "triad"),
        "stencil2d": (16 * (side - 2) ** 2 / 1e9, "GB/s", "triad"),
        "histogram": (8 * n / 1e9, "GB/s", "triad"),
        "matmul": (2 * m**3 / 1e9, "GFLOP/s", "dgemm"),
        "matmul_numba_tiles": (2 * m**3 / 1e9, "GFLOP/s", "dgemm"),
        "nbody": (20 * nb * nb / 1e9, "GFLOP/s", "fp64"),  # scalar FP64, not tensor cores
        "montecarlo_pi": (s["mc"] / 1e6, "Msamples/s", ""),
    }
    refs = cupy_references(s, repeat, x, y, out, grid, a, b, c)
    return [
        {
            "kernel": k,
            "seconds": t[k],
            "rate": work[k][0] / t[k],
            "unit": work[k][1],
            "limit": work[k][2],
            "reference_seconds": refs.get(k),
            "speedup_vs_reference": refs[k] / t[k] if k in refs else None,
        }
        for k in t
    ]


def cupy_references(s: Sizes, repeat: int, *arrays: Any) -> dict[str, float]:
    """The contract's NumPy expressions run by CuPy on the same device arrays (the GPU's
    counterpart of the NumPy reference on the CPU); empty without CuPy or under the simulator."""
    if numba.config.ENABLE_CUDASIM:
        return {}
    try:
        import cupy
    except ImportError:
        return {}
    x, y, out, grid, a, b, c = (cupy.asarray(v) for v in arrays)
    its = s["its"]

    def stencil() -> object:
        u = grid
        for _ in range(its):
            v = u.copy()
            v[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
            u = v
        return u

    def pi() -> object:
        p = cupy.random.default_rng(1).random((2, s["mc"] // 10))
        return (p[0] ** 2 + p[1] ** 2 <= 1.0).sum()

    return {
        "saxpy": gpu_time(lambda: cupy.add(2.0 * x, y, out=out), repeat),
        "stencil2d": gpu_time(stencil, repeat) / its,
        "histogram": gpu_time(lambda: cupy.histogram(x, 1000, (0.0, 1.0)), repeat),
        "matmul": gpu_time(lambda: cupy.matmul(a, b, out=c), repeat),
        "matmul_numba_tiles": gpu_time(lambda: cupy.matmul(a, b, out=c), repeat),
        "montecarlo_pi": gpu_time(pi, repeat) * 10,  # a tenth of the samples (memory)
    }


FP64_LANES_PER_SM = {  # FP64 FMA units per SM (non-tensor), by compute capability
    (6, 0): 32,
    (7, 0): 32,
    (8, 0): 32,
    (9, 0): 64,
    (10, 0): 64,
}


def fp64_peak_gflops(capability: tuple[int, int], sms: int, clock_khz: int) -> float | None:
    """The GPU's scalar FP64 peak (two flops per FMA lane per clock at the boost clock), the
    limit nbody's pair loop is compared with: tensor-core dgemm runs on other units. None for
    a compute capability without a known count (consumer GPUs have 2 lanes per SM or so)."""
    lanes = FP64_LANES_PER_SM.get(tuple(capability))  # type: ignore[arg-type]
    return 2.0 * lanes * sms * clock_khz / 1e6 if lanes else None


def device_fp64_peak() -> float | None:
    from numba import cuda

    try:
        dev = cuda.get_current_device()
        return fp64_peak_gflops(dev.compute_capability, dev.MULTIPROCESSOR_COUNT, dev.CLOCK_RATE)
    except Exception:  # an attribute this driver does not report: no peak, no fraction
        return None


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
    triad = triad_bandwidth(sizes["n"], repeat)
    blas = None if simulated else cublas_dgemm(sizes["m"], repeat)
    fp64 = None if simulated else device_fp64_peak()
    limits = {"triad": triad, "dgemm": blas[1] if blas else None, "fp64": fp64}
    rows = measure(sizes, repeat)
    print(
        f"device: {device}; triad {triad:.1f} GB/s; dgemm {blas or 'no CuPy/PyTorch'}; "
        f"FP64 peak {f'{fp64:.0f} GFLOP/s' if fp64 else 'unknown'}"
    )
    for r in rows:
        lim = limits.get(r["limit"])
        r["fraction_of_limit"] = r["rate"] / lim if lim else None
        frac = f"{r['fraction_of_limit']:.0%}" if lim else "-"
        speed = r["speedup_vs_reference"]
        vs = f"{speed:>8.2f}x CuPy" if speed else ""
        print(
            f"{r['kernel']:<19}{r['seconds']:>12.6f} s{r['rate']:>12.1f} {r['unit']:<8}{frac:>6}"
            f"{vs}"
        )
    report = {"device": device, "simulated": simulated, "sizes": sizes, "limits": limits}
    write({**report, "kernels": rows}, "kernels-cuda.json")
    return 0
