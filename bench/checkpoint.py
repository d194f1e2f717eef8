"""Checkpoints: (a) their overhead on a long ``stencil2d`` job, the same job with checkpoints
off in the same run; (b) the work a ``kill -9`` of the kernel's process loses, and the time
from the kill to the job computing again from its checkpoint.

Both run the kernels in the worker's warm pool (``KernelRunner``: the process, frames,
progress reports and checkpoint files of a real attempt), without the database and broker: a
lost worker's job is also held by its lease (``STRATUS_LEASE_S``, 30 s by default) before the
reaper queues it again, which (b)'s "kill to running again" leaves out and says so.

    python bench/checkpoint.py            # (a) 60 s jobs, interval 30 s; (b) 5 kills
    python bench/checkpoint.py --quick    # (a) 15 s jobs, interval 5 s; (b) 3 kills
    python bench/checkpoint.py --scale-down [--job-seconds 60] [--short 0.5] [--bursts 2]
                  [--jobs 8] [--max-workers 4] [--slots 2] [--gap 30] [--cooldown 10]

(a) is met when the job with checkpoints is at most 3 % slower (``overhead``); (b) when the
median recomputed time is at most the interval plus the resume time.

(c) ``--scale-down`` (on its own: it starts three local clusters, minutes each): scale-down
with long jobs. ``--bursts`` bursts of ``--jobs`` ``montecarlo_pi`` jobs, long ones of
``--job-seconds`` and short ones of ``--short`` times that by turns (CPU seconds of one
thread of this host, calibrated first), each burst submitted at once and the next ``--gap``
seconds after the previous one ended, under three set-ups of ``--max-workers`` workers of
``--slots`` slots each (one thread a job), each a fresh local cluster under supervisord
(``bench/scaling.py``'s ``local`` backend):

1. ``fixed``: ``--max-workers`` workers all along;
2. ``autoscale``: 1 to ``--max-workers`` workers, jobs checkpointing every ``--job-seconds``
   / 6 (at least 1 s): a scale-down drains a worker through checkpoints (its jobs resume on
   the others' free slots at once);
3. ``autoscale-wait``: the same autoscaler, the jobs without checkpoints: a worker being
   removed waits for its jobs (``STRATUS_SHUTDOWN_GRACE_S``, here the jobs' timeout, so
   that none is handed back to start over), which was the only way before checkpoints.

The burst's order (a long job, a short one, ...) gives each worker a long and a short job:
once the short ones end, the long ones run on every worker at half occupancy, and the
autoscaler, sized for the demand (``--slots`` jobs a worker,
``STRATUS_AUTOSCALE__TARGET_JOBS_PER_WORKER``), consolidates them on fewer workers after
``--cooldown``: through checkpoints in 2., by waiting in 3. Jobs of one length do not show
it: the freed slots take a burst's last jobs and the other workers end idle, stopped as they
are (what the first runs of this benchmark measured). A worker that was slow to start (a
loaded host) leaves the first worker to take a second long job, and fewer workers run at
half occupancy.

Per set-up: completion time (the sum over bursts of first submit to last job finished),
worker-seconds (worker processes up or being stopped, sampled every 0.2 s, from the first
submit to the end of the last burst: a worker that waits for its jobs still holds its
machine), the scale-downs taken while jobs ran, and the jobs drained (moved off a stopped
worker), resumed from a checkpoint and restarted from the start.

``make bench`` leaves (c) out, and no ``--quick`` size of it exists: the three clusters'
starts and stops alone take about 2 minutes on a 2-core host, and bursts long beside a
worker's start (seconds, tens of seconds on a loaded host) take minutes more, so no size
that still shows a drain runs within the 3 minutes a quick run may take.
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
SCALE_RESULTS = RESULTS.with_name("checkpoint-scale-down.json")


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


# --- (c) scale-down with long jobs ---------------------------------------------------------

# a worker holds its machine while it runs or is being stopped (a drain that waits)
HOLDING = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


async def job_samples(seconds: float) -> int:
    """``montecarlo_pi`` samples that take about ``seconds`` of CPU on one thread of this
    host."""
    runner = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE, threads=1))
    await runner.start()
    try:
        n = 10_000_000
        while True:
            out = await runner.run(Request("montecarlo_pi", "cpu", {"samples": n, "seed": 1}))
            assert out.status is Status.SUCCEEDED, out.error
            # CPU seconds: the host's other load stretches the wall clock, not them
            if out.usage.cpu_seconds > 1.0:
                return max(1, int(n * seconds / out.usage.cpu_seconds))
            n *= 4
    finally:
        await runner.close()


def lengths(args: argparse.Namespace) -> list[float]:
    """One burst's job lengths in seconds, in submission order: long (``--job-seconds``) and
    short (``--short`` x that) by turns. Each worker takes its ``--slots`` (2) jobs in that
    order, a long and a short one: once the short ones end, the long ones run on every worker
    at half occupancy, which a scale-down consolidates. (Jobs of one length would not do: a
    slot freed takes the next job of the queue, so a burst's last jobs fill the workers that
    freed slots first and the others end idle, which a scale-down stops as they are.)"""
    return [args.job_seconds * (args.short if i % 2 else 1.0) for i in range(args.jobs)]


def scale_down(args: argparse.Namespace) -> dict[str, Any]:
    """(c): the three set-ups in one run; their figures, printed and returned."""
    import secrets
    import shutil
    import threading

    import httpx

    from bench.scaling import FINAL, tenant_headers
    from tools.cluster import (
        Autoscale,
        ClusterConfig,
        LocalCluster,
        drop_database,
        drop_vhost,
        prepare_database,
        prepare_vhost,
    )

    root = Path(__file__).resolve().parent / "results" / "checkpoint-scale-run"
    name = f"stratus_bench_ckscale_{secrets.token_hex(3)}"
    samples = asyncio.run(job_samples(args.job_seconds))
    burst = lengths(args)
    interval = max(1, round(args.job_seconds / 6))
    timeout_s = int(args.job_seconds * 20 + 600)
    # a stopped worker waits for the jobs that do not checkpoint (drain by waiting), up to
    # their timeout, rather than handing them back after the default 20 s to start over
    grace_s = timeout_s
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    env = {
        "STRATUS_POSTGRES__DATABASE": name,
        "STRATUS_RABBIT__VHOST": name,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": "bench-" + secrets.token_urlsafe(16),
        "STRATUS_ENVIRONMENT": "bench",
        "STRATUS_LOG_LEVEL": "WARNING",
        "STRATUS_STORAGE__LOCAL__ROOT": str(root / "data" / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(root / "data" / "archive"),
        "STRATUS_STORAGE__FSYNC": "false",
        "STRATUS_AUTOSCALE__COOLDOWN_S": str(args.cooldown),
        "STRATUS_AUTOSCALE__INTERVAL_S": "0.5",
        "STRATUS_AUTOSCALE__TARGET_JOBS_PER_WORKER": str(args.slots),
        "STRATUS_WORKER_TTL_S": "5",
    }
    admin = {"Authorization": f"Bearer {admin_key}"}
    print(
        f"(c) scale-down: {args.bursts} bursts of {args.jobs} montecarlo_pi jobs of "
        f"{min(burst):.3g} to {args.job_seconds:g} s on one thread ({samples} samples for "
        f"{args.job_seconds:g} s), {args.gap:g} s apart; "
        f"{args.max_workers} workers of {args.slots} slots at most; checkpoints every "
        f"{interval} s where on; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )

    class Meter:
        def __init__(self, cluster: LocalCluster) -> None:
            self.cluster, self.worker_seconds, self.peak = cluster, 0.0, 0
            self.timeline: list[tuple[float, int]] = []  # (seconds, workers), on each change
            self.running = True
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

        def count(self) -> int:
            members = set(self.cluster.members("worker"))
            states = self.cluster._states()
            return sum(1 for n, st in states.items() if n in members and st in HOLDING)

        def run(self) -> None:
            start = last = time.monotonic()
            count = self.count()
            self.timeline.append((0.0, count))
            while self.running:
                time.sleep(0.2)
                now = time.monotonic()
                self.worker_seconds += count * (now - last)
                last, count = now, self.count()
                self.peak = max(self.peak, count)
                if count != self.timeline[-1][1]:
                    self.timeline.append((round(now - start, 1), count))

        def stop(self) -> None:
            self.running = False
            self.thread.join()

    async def drive(cluster: LocalCluster, checkpoint_s: int) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=60) as api:
            h = await tenant_headers(api, admin)
            meter, bursts, ids = Meter(cluster), [], []
            try:
                for b in range(args.bursts):
                    if b:
                        await asyncio.sleep(args.gap)
                    t0 = time.monotonic()
                    for j, seconds in enumerate(burst):
                        n = max(1, int(samples * seconds / args.job_seconds))
                        body = {
                            "kernel": "montecarlo_pi",
                            "params": {"samples": n, "seed": b * args.jobs + j},
                            "checkpoint_interval_s": checkpoint_s,
                            "timeout_s": timeout_s,
                        }
                        r = await api.post("/v1/jobs", json=body, headers=h)
                        r.raise_for_status()
                        ids.append(r.json()["id"])
                    while True:
                        jobs = [(await api.get(f"/v1/jobs/{i}", headers=h)).json() for i in ids]
                        if all(j["state"] in FINAL for j in jobs):
                            break
                        await asyncio.sleep(1.0)
                    bursts.append(time.monotonic() - t0)
                    print(f"    burst {b + 1}: {bursts[-1]:.1f} s", flush=True)
            finally:
                meter.stop()
            pools = (await api.get("/v1/admin/pools", headers=admin)).json()["items"]
            decisions: list[dict[str, Any]] = next(
                (p.get("decisions", []) for p in pools if p["pool"] == "cpu"), []
            )
            downs = [d for d in decisions if d["action"] == "down"]
            return {
                # scale-downs, and those taken while jobs ran or waited (a consolidation)
                "downs": len(downs),
                "downs_with_jobs": sum(d["demand"] > 0 for d in downs),
                "timeline": meter.timeline,
                # where each job ended, and when (for a look at how the bursts spread)
                "jobs": [
                    {k: j[k] for k in ("worker", "started_at", "finished_at", "preemptions")}
                    for j in jobs
                ],
                "burst_s": bursts,
                "completion_s": sum(bursts),
                "worker_seconds": meter.worker_seconds,
                "peak_workers": meter.peak,
                "failed": sum(j["state"] != "SUCCEEDED" for j in jobs),
                "drained": sum(j["preemptions"] for j in jobs),
                "restarted": sum(j["attempts"] > 1 and j["resumed_from"] is None for j in jobs),
                "resumed": sum(j["resumed_from"] is not None for j in jobs),
            }

    def run_setup(setup: str) -> dict[str, Any]:
        run_dir = root / setup
        shutil.rmtree(run_dir, ignore_errors=True)
        fixed = setup == "fixed"
        cfg = ClusterConfig(
            run_dir=run_dir,
            env=env,
            gateway_port=19700,
            scheduler_port=19701,
            datamover_port=19703,
            worker_base_port=19800,
            workers=args.max_workers if fixed else 1,
            worker_env={
                "STRATUS_CONCURRENCY": str(args.slots),
                "STRATUS_THREADS_PER_PROCESS": "1",
                "STRATUS_SHUTDOWN_GRACE_S": str(grace_s),
            },
            worker_stop_wait_s=grace_s + 30,
            autoscale=None if fixed else Autoscale(min_workers=1, max_workers=args.max_workers),
        )
        cluster = LocalCluster(cfg)
        print(f"  {setup}: starting", flush=True)
        cluster.start(timeout=180)
        try:
            return asyncio.run(drive(cluster, 0 if setup == "autoscale-wait" else interval))
        finally:
            cluster.stop()

    out: dict[str, Any] = {}
    try:
        prepare_database(name)
        prepare_vhost(name)
        for setup in args.setups.split(","):
            out[setup] = run_setup(setup)
    finally:
        drop_database(name)
        drop_vhost(name)
    print()
    print("{:<15} {:>13} {:>10} {:>5} {:>6} {:>7} {:>8} {:>8} {:>10}".format(
        "set-up", "completion s", "worker-s", "peak", "downs", "failed", "drained", "resumed",
        "restarted"
    ))  # fmt: skip
    for setup, o in out.items():
        print(
            f"{setup:<15} {o['completion_s']:>13.1f} {o['worker_seconds']:>10.1f} "
            f"{o['peak_workers']:>5} {o['downs_with_jobs']:>6} {o['failed']:>7} "
            f"{o['drained']:>8} {o['resumed']:>8} {o['restarted']:>10}"
        )
    print(
        "(downs: scale-downs taken while jobs ran or waited; drained: times a job was moved "
        "off a stopped worker; resumed: jobs that resumed from a checkpoint; restarted: jobs "
        "that ran again from the start)"
    )
    ratios = {
        f"autoscale_vs_{other.removeprefix('autoscale-')}": {
            "time": out["autoscale"]["completion_s"] / out[other]["completion_s"],
            "worker_seconds": out["autoscale"]["worker_seconds"] / out[other]["worker_seconds"],
        }
        for other in ("fixed", "autoscale-wait")
        if "autoscale" in out and other in out
    }
    for key, r in ratios.items():
        print(f"{key}: time {r['time']:.2f}x, worker-seconds {r['worker_seconds']:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return {
        "job_seconds": args.job_seconds,
        "lengths_s": burst,
        "samples": samples,
        "interval_s": interval,
        "bursts": args.bursts,
        "jobs": args.jobs,
        "max_workers": args.max_workers,
        "slots": args.slots,
        "setups": out,
        **ratios,
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
    parser.add_argument("--scale-down", action="store_true", help="(c) alone, see above")
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--short", type=float, default=0.5)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--gap", type=float, default=30.0)
    parser.add_argument("--cooldown", type=float, default=10.0)
    parser.add_argument(
        "--setups", default="fixed,autoscale,autoscale-wait", help="(c)'s, comma-separated"
    )
    args = parser.parse_args()
    if args.scale_down:
        c = await asyncio.to_thread(scale_down, args)
        SCALE_RESULTS.parent.mkdir(exist_ok=True)
        SCALE_RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **c}, indent=1))
        return
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
