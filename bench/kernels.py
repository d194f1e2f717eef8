"""Kernel benchmark: each kernel against its NumPy reference and against the machine's
limit measured in the same run; first-job latency of a fresh pool process.

    .venv/bin/python bench/kernels.py [--quick] [--repeat N] [--device cpu|cuda] [--only NAME]

CPU: the limits are STREAM triad bandwidth (numba ``prange``, ``a = b + s*c``, 24 bytes per
element) for the memory-bound kernels (saxpy, stencil2d, histogram) and NumPy's BLAS dgemm
rate for matmul and, as the flop-rate reference, for nbody (20 flops per ordered pair, n² in
all: the kernel computes each pair once for both bodies, so its rate is the work it
replaces, as an all-pairs kernel would be counted). stencil2d's bandwidth counts one read
and one write per point and step (what a sweep per step moves). Times are
medians of ``--repeat`` runs after one warm-up run; the compute is timed on arrays in memory
(no file I/O). Latency: a job of each kernel on a pool process that has just said ready
(warmed at start, as the worker does), against the median of the same job once warm, and
the first job of a process started without the warm-up, for comparison.

``--device cuda`` runs ``bench/kernels_cuda.py`` (the same on a GPU). Writes
``bench/results/kernels.json`` (``kernels-cuda.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo root
CACHE = Path(os.environ.get("STRATUS_NUMBA_CACHE_DIR", Path.home() / ".cache/stratus/numba"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(CACHE))  # before numba is imported
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as in the pool: no spinning after dgemm

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

from bench.kernels_ref import numpy_accelerations, numpy_pi, numpy_stencil  # noqa: E402
from services.worker.kernels import histogram, montecarlo, nbody, saxpy, stencil2d  # noqa: E402
from services.worker.kernels.base import readonly  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGETS = {  # each kernel's goal, as a fraction of the machine's limit
    "saxpy": 0.80,
    "stencil2d": 0.75,
    "histogram": 0.50,
    "matmul": 0.90,
    "nbody": 0.50,
}
# Kernels whose implementation is NumPy's own call, timed against that same call: matmul runs
# np.matmul into its output, and its reference (a @ b) is also its limit (dgemm), so its speedup
# is the limit fraction again, 1.0 give or take the noise of two runs of one BLAS call. Its row
# is judged on the limit fraction alone (a 0.98 "speedup" is noise, not a slower kernel).
SAME_AS_REFERENCE = {"matmul"}
LATENCY_TARGET_S = 0.200
ISA = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512cd")


def host() -> dict[str, Any]:
    """The machine the figures are taken on: the CPU's model, the CPU and vector instruction
    sets numba compiles for (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` or the host's), its
    cores and threads, and the numba, llvmlite and LLVM versions; ``label``: a short form
    printed beside every figure."""
    import llvmlite  # type: ignore[import-untyped]
    import llvmlite.binding as llvm  # type: ignore[import-untyped]

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    target = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    isa = [f[1:] for f in features.split(",") if f[:1] == "+" and f[1:] in ISA]
    widest = "avx512" if "avx512f" in isa else "avx2" if "avx2" in isa else "sse"
    info = {
        "cpu": model,
        "target": target,
        "isa": isa,
        "cores": os.cpu_count(),
        "threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(str(v) for v in llvm.llvm_version_info),
        "load_average": os.getloadavg()[0],  # another tenant's load moves every fraction
    }
    info["label"] = f"{model} ({target}, {widest}, {info['cores']} cores)"
    return info


def print_host(info: dict[str, Any]) -> None:
    print(
        f"host: {info['cpu']}, numba targets {info['target']} ({' '.join(info['isa'])}), "
        f"{info['cores']} cores, {info['threads']} threads, numba {info['numba']}, "
        f"llvmlite {info['llvmlite']}, LLVM {info['llvm']}; load average {info['load_average']:.1f}"
    )


def median_time(fn: Callable[[], object], repeat: int) -> float:
    return interleaved({"fn": fn}, repeat)["fn"]


def interleaved(
    fns: dict[str, Callable[[], object]], repeat: int, settle_s: float = 0.0
) -> dict[str, float]:
    """Median seconds of each function, timed in turns so that all see the same noise (the
    machine is shared); one untimed run each first (compile or load, first touch).
    ``settle_s``: an untimed pause after each run, so that the threads of one (OpenBLAS's
    spin a while after a dgemm) are asleep before the next is timed."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


@numba.njit(cache=True, parallel=True)  # type: ignore[untyped-decorator]
def _triad(a: Any, b: Any, c: Any, s: float) -> None:
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


class Limits:
    """The machine's limits, measured beside each kernel: STREAM triad and NumPy dgemm."""

    def __init__(self, quick: bool) -> None:
        n = 2**23 if quick else 2**25  # 3 x 256 MiB: beyond the last-level cache
        self.triad_bytes = 24 * n
        self.a, self.b, self.c = np.zeros(n), np.ones(n), np.ones(n)
        self.m = 1024 if quick else 2048
        self.x, self.y = np.random.default_rng(0).random((2, self.m, self.m))
        self.dgemm_flops = 2 * self.m**3

    def triad(self) -> None:
        _triad(self.a, self.b, self.c, 3.0)

    def dgemm(self) -> None:
        self.x @ self.y


def row(
    name: str, size: str, t: dict[str, float], work: float, unit: str, limit: float | None
) -> dict[str, Any]:
    """``t``: seconds of the kernel (``fast``), NumPy (``ref``) and of ``limit`` doing
    ``work`` (bytes or flops, in the unit's numerator) measured in the same turns."""
    rate = work / t["fast"] / 1e9
    return {
        "kernel": name,
        "size": size,
        "numba_s": t["fast"],
        "numpy_s": t["ref"],
        "speedup": t["ref"] / t["fast"],
        "rate": rate,
        "unit": unit,
        "limit_rate": limit,
        "fraction_of_limit": rate / limit if limit else None,
        "target": TARGETS.get(name),
    }


def bench_saxpy(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    n = 2**23 if quick else 2**25
    x, y, out = readonly(np.ones(n)), readonly(np.ones(n)), np.empty(n)
    fns = {"fast": lambda: saxpy.saxpy(2.0, x, y, out), "ref": lambda: 2.0 * x + y}
    t = interleaved({**fns, "triad": lim.triad}, repeat)
    triad = lim.triad_bytes / t["triad"] / 1e9
    return row("saxpy", f"n=2^{n.bit_length() - 1}", t, 24 * n, "GB/s", triad)


def bench_stencil(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    # 2 x 512 MiB: beyond the cache; 32 steps: two passes of 16 (temporal blocking)
    side, its = (2048, 32) if quick else (8192, 32)
    grid = np.random.default_rng(1).random((side, side))
    a, b = grid.copy(), grid.copy()
    t = interleaved({"fast": lambda: stencil2d.jacobi(a, b, its), "triad": lim.triad}, repeat)
    t["ref"] = its * median_time(lambda: numpy_stencil(grid, 1), max(1, repeat // 2))
    triad = lim.triad_bytes / t["triad"] / 1e9
    work = 16 * (side - 2) ** 2 * its  # read once, write once per point and step
    return row("stencil2d", f"{side}^2 x {its} steps", t, work, "GB/s", triad)


def bench_histogram(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    n, bins = (2**23 if quick else 2**26), 1000
    data = readonly(np.random.default_rng(2).uniform(-0.1, 1.1, n))
    threads = numba.get_num_threads()

    def fast() -> object:
        return histogram.histogram(data, bins, 0.0, 1.0, threads)

    fns = {"fast": fast, "ref": lambda: np.histogram(data, bins, (0.0, 1.0)), "triad": lim.triad}
    t = interleaved(fns, repeat)
    triad = lim.triad_bytes / t["triad"] / 1e9
    return row("histogram", f"n=2^{n.bit_length() - 1}, {bins} bins", t, 8 * n, "GB/s", triad)


def bench_matmul(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    m = lim.m
    a, b = (readonly(x) for x in np.random.default_rng(3).random((2, m, m)))
    c = np.empty((m, m))
    # the kernel calls np.matmul into its output; the reference and the limit are NumPy's a @ b
    t = interleaved({"fast": lambda: np.matmul(a, b, out=c), "ref": lambda: a @ b}, repeat)
    dgemm = 2 * m**3 / t["ref"] / 1e9
    return row("matmul", f"{m}^2", t, 2 * m**3, "GFLOP/s", dgemm)


def bench_nbody(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    n = 4096 if quick else 8192
    rng = np.random.default_rng(4)
    pos, m, acc = rng.normal(size=(3, n)), rng.uniform(0.5, 1.5, n), np.empty((3, n))
    fns = {"fast": lambda: nbody.accelerations(pos, m, 1e-4, acc), "dgemm": lim.dgemm}
    # timed right after a dgemm, nbody shares the cores with OpenBLAS's spinning threads
    # (82 against 94 GFLOP/s 0.3 s later, a quiet Xeon, 2026-12-07)
    t = interleaved(fns, repeat, settle_s=0.3)
    t["ref"] = median_time(lambda: numpy_accelerations(pos.T.copy(), m, 1e-4), 1)
    dgemm = lim.dgemm_flops / t["dgemm"] / 1e9
    work = nbody.FLOPS_PER_PAIR * n * n
    return row("nbody", f"n={n}, one force pass", t, work, "GFLOP/s", dgemm)


def bench_montecarlo(quick: bool, repeat: int, lim: Limits) -> dict[str, Any]:
    samples = 2 * 10**7 if quick else 10**8
    fns = {"fast": lambda: montecarlo.estimate(samples, 1), "ref": lambda: numpy_pi(samples, 1)}
    t = interleaved(fns, max(1, repeat // 2))
    return row("montecarlo_pi", f"{samples:.0e} samples", t, samples * 1e3, "M/s", None)


BENCHES = [bench_saxpy, bench_stencil, bench_histogram, bench_matmul, bench_nbody]
BENCHES.append(bench_montecarlo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--only",
        choices=[b.__name__.removeprefix("bench_") for b in BENCHES],
        help="one kernel's row alone (CPU; no latency), written to kernels-<name>.json",
    )
    opts = p.parse_args()
    repeat = opts.repeat or (3 if opts.quick else 5)
    if opts.device == "cuda":
        from bench.kernels_cuda import run_cuda_bench

        raise SystemExit(run_cuda_bench(opts.quick, repeat))
    report: dict[str, Any] = {"device": "cpu", "quick": opts.quick, "repeat": repeat}
    report["threads"] = numba.get_num_threads()
    report["host"] = host()
    print_host(report["host"])
    lim = Limits(opts.quick)
    benches = [b for b in BENCHES if opts.only in (None, b.__name__.removeprefix("bench_"))]
    report["kernels"] = [bench(opts.quick, repeat, lim) for bench in benches]
    for r in report["kernels"]:
        r["host"] = report["host"]["label"]
    print_table(report["kernels"])
    report["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end: {report['load_average_end']:.1f}")
    if opts.only:
        write(report, f"kernels-{opts.only}.json")
        return
    from bench.kernels_latency import latency, print_latency

    report["latency"] = asyncio.run(latency(CACHE, repeat=repeat))
    print_latency(report["latency"], LATENCY_TARGET_S)
    write(report, "kernels.json")


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'kernel':<14}{'size':<26}{'numba s':>10}{'numpy s':>10}{'x numpy':>9}"
    print(head + f"{'rate':>16}{'limit':>8}{'of limit':>10}{'target':>8}  ok   host")
    for r in rows:
        frac, target = r["fraction_of_limit"], r["target"]
        faster = r["kernel"] in SAME_AS_REFERENCE or r["speedup"] >= 1
        ok = faster and (target is None or frac >= target)
        rate = f"{r['rate']:.1f} {r['unit']}"
        limit = f"{r['limit_rate']:.1f}" if r["limit_rate"] else "-"
        print(
            f"{r['kernel']:<14}{r['size']:<26}{r['numba_s']:>10.4f}{r['numpy_s']:>10.4f}"
            f"{r['speedup']:>9.1f}{rate:>16}{limit:>8}"
            f"{(f'{frac:.0%}' if frac is not None else '-'):>10}"
            f"{(f'{target:.0%}' if target else '-'):>8}  {'yes' if ok else 'NO ':<3}  {r['host']}"
        )


def write(report: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
