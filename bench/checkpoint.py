"""Checkpoints: (a) their overhead on a long ``stencil2d`` job, the same job with checkpoints
off in the same run; (b) the work a ``kill -9`` of the kernel's process loses, and the time
from the kill to the job computing again from its checkpoint.

Both run the kernels in the worker's warm pool (``KernelRunner``: the process, frames,
progress reports and checkpoint files of a real attempt), without the database and broker: a
lost worker's job is also held by its lease (``STRATUS_LEASE_S``, 30 s by default) before the
reaper queues it again, which (b)'s "kill to running again" leaves out and says so.

    python bench/checkpoint.py            # (a) 60 s jobs, interval 30 s; (b) 5 kills
    python bench/checkpoint.py --quick    # (a) 15 s jobs, interval 5 s; (b) 3 kills

(a) is met when the job with checkpoints is at most 3 % slower (``overhead``); (b) when the
median recomputed time is at most the interval plus the resume time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.worker.runner import KernelRunner, PoolConfig, Request, Status

CACHE = Path(os.path.expanduser("~/.cache/stratus/numba"))
RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint.json"


def request(folder: Path, iterations: int, tag: str, interval_s: float | None) -> Request:
    spec = None
    if interval_s is not None:
        spec = {"folder": str(folder / f"ck-{tag}"), "interval_s": interval_s}
    return Request(
        "stencil2d",
        "cpu",
        {"iterations": iterations},
        {"grid": str(folder / "grid.npy")},
        {"grid": str(folder / f"out-{tag}.npy")},
        checkpoint=spec,
    )


async def calibrate(runner: KernelRunner, folder: Path, seconds: float) -> int:
    """Iterations of the grid that take about ``seconds``."""
    n = 20
    while True:
        out = await runner.run(request(folder, n, "cal", None))
        assert out.status is Status.SUCCEEDED, out.error
        if out.usage.wall_seconds > 1.0:
            return max(1, int(n * seconds / out.usage.wall_seconds))
        n *= 4


async def overhead(
    runner: KernelRunner, folder: Path, seconds: float, interval_s: float, pairs: int
) -> dict[str, Any]:
    iterations = await calibrate(runner, folder, seconds)
    off: list[float] = []
    on: list[float] = []
    saved: list[int] = []
    writes: list[float] = []  # seconds spent writing checkpoints, per job
    on_cpu: list[float] = []  # CPU seconds: what a busy host's load blurs least
    off_cpu: list[float] = []
    for i in range(pairs):  # interleaved: the host's load falls on both alike
        for kind in ("off", "on") if i % 2 == 0 else ("on", "off"):
            events: list[dict[str, Any]] = []
            tag = f"{kind}{i}"
            r = request(folder, iterations, tag, interval_s if kind == "on" else None)
            out = await runner.run(r, on_checkpoint=events.append)
            assert out.status is Status.SUCCEEDED, out.error
            (on if kind == "on" else off).append(out.usage.wall_seconds)
            (on_cpu if kind == "on" else off_cpu).append(out.usage.cpu_seconds)
            if kind == "on":
                saved.append(out.checkpoints)
                writes.append(sum(e["seconds"] for e in events if e["event"] == "saved"))
    a, b = np.load(folder / "out-off0.npy"), np.load(folder / "out-on0.npy")
    assert np.array_equal(a, b), "checkpoints changed the result"
    ratio = statistics.median(on) / statistics.median(off)
    cpu_ratio = statistics.median(on_cpu) / statistics.median(off_cpu)
    return {
        "iterations": iterations,
        "interval_s": interval_s,
        "off_s": off,
        "on_s": on,
        "checkpoints": saved,
        "write_s": writes,
        "off_cpu_s": off_cpu,
        "on_cpu_s": on_cpu,
        "cpu_overhead": cpu_ratio - 1.0,
        # the part of the job spent writing checkpoints: what the overhead is made of, which
        # a busy host's noise (the two runs' ratio) does not blur
        "write_share": statistics.median(writes) / statistics.median(off),
        "overhead": ratio - 1.0,
        "met": ratio - 1.0 <= 0.03,
    }


def stamped(into: list[tuple[float, dict[str, Any]]], event: dict[str, Any]) -> None:
    into.append((time.perf_counter(), event))


async def kills(
    runner: KernelRunner, folder: Path, interval_s: float, count: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    iterations = await calibrate(runner, folder, 12 * interval_s)
    lost: list[float] = []
    resume: list[float] = []
    back: list[float] = []
    for k in range(count):
        events: list[tuple[float, dict[str, Any]]] = []
        seen: list[tuple[float, dict[str, Any]]] = []
        tag = f"kill{k}"
        r = request(folder, iterations, tag, interval_s)
        before = {p.pid for p in runner._procs}
        t0 = time.perf_counter()
        task = asyncio.ensure_future(runner.run(r, on_checkpoint=partial(stamped, events)))
        await asyncio.sleep(0.2)
        idle = {p.pid for p in runner._idle._queue}  # type: ignore[attr-defined]
        (pid,) = before - idle
        await asyncio.sleep(rng.uniform(1.2 * interval_s, 4.0 * interval_s))
        with contextlib.suppress(ProcessLookupError):  # gone already: no sample, below
            os.kill(pid, signal.SIGKILL)
        killed_at = time.perf_counter()
        out = await task
        if out.status is not Status.CRASHED:  # it ended first (a host much faster than its
            continue  # calibration): no sample
        saves = [(t, e) for t, e in events if e["event"] == "saved"]
        # the state a checkpoint holds is the one from when its write began
        last = saves[-1][0] - saves[-1][1]["seconds"] if saves else t0
        lost.append(killed_at - last)
        await runner.wait_idle()  # the killed process's replacement is warm
        started = time.perf_counter()
        again = await runner.run(r, on_checkpoint=partial(stamped, seen))
        assert again.status is Status.SUCCEEDED, again.error
        resumed = [t for t, e in seen if e["event"] == "resumed"]
        if resumed:
            resume.append(resumed[0] - started)
            back.append(resumed[0] - killed_at)
        await runner.wait_idle()
    median_lost = statistics.median(lost)
    median_resume = statistics.median(resume) if resume else float("nan")
    return {
        "interval_s": interval_s,
        "kills": count,
        "recomputed_s": lost,
        "median_recomputed_s": median_lost,
        "median_resume_s": median_resume,
        "kill_to_running_s": back,
        "met": median_lost <= interval_s + median_resume,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--interval", type=float, default=None)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--kill-interval", type=float, default=None)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    interval = args.interval or (5.0 if args.quick else 30.0)
    n_kills = args.kills if args.kills is not None else (3 if args.quick else 5)
    kill_interval = args.kill_interval or (2.0 if args.quick else 5.0)
    threads = max(1, min(4, os.cpu_count() or 1))
    runner = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE, threads=threads))
    await runner.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            grid = np.random.default_rng(1).normal(size=(args.size, args.size))
            np.save(folder / "grid.npy", grid)
            a = await overhead(runner, folder, seconds, interval, args.pairs)
            print(
                f"(a) stencil2d {args.size}x{args.size}, {a['iterations']} iterations: "
                f"checkpoints off {statistics.median(a['off_s']):.2f} s, every {interval:g} s "
                f"{statistics.median(a['on_s']):.2f} s ({a['checkpoints']} written): overhead "
                f"{a['overhead'] * 100:+.2f} % (<= 3 %: {'met' if a['met'] else 'NOT met'}); "
                f"writing them took {statistics.median(a['write_s']):.2f} s a job "
                f"({a['write_share'] * 100:.2f} % of the job); CPU seconds "
                f"{statistics.median(a['off_cpu_s']):.1f} off, "
                f"{statistics.median(a['on_cpu_s']):.1f} on: {a['cpu_overhead'] * 100:+.2f} %"
            )
            if n_kills == 0:  # (a) alone
                b: dict[str, Any] = {}
            else:
                b = await kills(runner, folder, kill_interval, n_kills, seed=7)
            if b:
                print(
                    f"(b) kill -9 x{n_kills}, interval {kill_interval:g} s: median recomputed "
                    f"{b['median_recomputed_s']:.2f} s, median resume {b['median_resume_s']:.3f} s "
                    f"(<= interval + resume: {'met' if b['met'] else 'NOT met'}); kill to "
                    f"running again {statistics.median(b['kill_to_running_s']):.2f} s median in "
                    "the pool (a lost worker's lease adds up to STRATUS_LEASE_S)"
                )
    finally:
        await runner.close()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "threads": threads, "overhead": a, "kill": b},
            indent=1,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
