"""First-job latency of ``bench/kernels.py``: a small job of each kernel on a pool process
that has just said ready, against the same job once the process is warm."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.worker.runner import KernelRunner, PoolConfig, Request, Status


def small_jobs(folder: Path) -> list[Request]:
    rng = np.random.default_rng(5)
    arrays = {
        "x": rng.random(1000),
        "y": rng.random(1000),
        "a": rng.random((64, 64)),
        "b": rng.random((64, 64)),
        "grid": rng.random((64, 64)),
        "bodies": rng.random((64, 7)),
        "data": rng.random(10_000),
    }
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], arr)

    def out(name: str) -> str:
        return str(folder / "out" / f"{name}.npy")

    def pick(*names: str) -> dict[str, str]:
        return {n: paths[n] for n in names}

    return [
        Request("saxpy", "cpu", {"a": 2.0}, pick("x", "y"), {"y": out("y")}),
        Request("matmul", "cpu", {}, pick("a", "b"), {"c": out("c")}),
        Request("stencil2d", "cpu", {"iterations": 10}, pick("grid"), {"grid": out("grid")}),
        Request(
            "nbody",
            "cpu",
            {"steps": 1, "dt": 0.01, "softening": 0.01},
            pick("bodies"),
            {"bodies": out("bodies")},
        ),
        Request("histogram", "cpu", {"bins": 100, "range": [0.0, 1.0]}, pick("data")),
        Request("montecarlo_pi", "cpu", {"samples": 10_000}),
    ]


async def timed(runner: KernelRunner, request: Request) -> float:
    t0 = time.perf_counter()
    outcome = await runner.run(request)
    elapsed = time.perf_counter() - t0
    if outcome.status is not Status.SUCCEEDED:
        raise RuntimeError(f"{request.kernel}: {outcome.error}")
    return elapsed


async def fresh_first_job(cache: Path, request: Request, warm: bool) -> tuple[float, float]:
    """Seconds until a new pool process is ready, and its first job's seconds."""
    runner = KernelRunner(PoolConfig(processes=1, cache_dir=cache, threads=2, warm=warm))
    t0 = time.perf_counter()
    await runner.start()
    ready = time.perf_counter() - t0
    try:
        return ready, await timed(runner, request)
    finally:
        await runner.close()


async def latency(cache: Path, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = small_jobs(Path(tmp))
        warm = KernelRunner(PoolConfig(processes=1, cache_dir=cache, threads=2))
        await warm.start()
        try:
            steady = {}
            for job in jobs:
                await timed(warm, job)
                steady[job.kernel] = statistics.median(
                    [await timed(warm, job) for _ in range(repeat)]
                )
        finally:
            await warm.close()
        rows = []
        for job in jobs:
            ready, first = await fresh_first_job(cache, job, warm=True)
            _, unwarmed = await fresh_first_job(cache, job, warm=False)
            rows.append(
                {
                    "kernel": job.kernel,
                    "process_ready_s": ready,
                    "first_job_s": first,
                    "warm_job_s": steady[job.kernel],
                    "first_minus_warm_s": first - steady[job.kernel],
                    "first_job_without_warmup_s": unwarmed,
                }
            )
    return {"jobs": rows}


def print_latency(report: dict[str, Any], target_s: float) -> None:
    print(
        f"\n{'first job':<14}{'ready s':>9}{'first ms':>10}{'warm ms':>9}{'extra ms':>10}"
        f"{'no warm-up ms':>15}  ok (extra < {target_s * 1000:.0f} ms)"
    )
    for r in report["jobs"]:
        ok = r["first_minus_warm_s"] < target_s
        print(
            f"{r['kernel']:<14}{r['process_ready_s']:>9.2f}{r['first_job_s'] * 1000:>10.1f}"
            f"{r['warm_job_s'] * 1000:>9.1f}{r['first_minus_warm_s'] * 1000:>10.1f}"
            f"{r['first_job_without_warmup_s'] * 1000:>15.1f}  {'yes' if ok else 'NO'}"
        )
