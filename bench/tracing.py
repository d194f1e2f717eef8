"""What tracing costs a job: the CPU time of the tracing hooks of one job (the gateway's
submission span, the scheduler's dispatch span, the relay's ``traceparent`` header, the
worker's claim, kernel and finish spans, and the log lines that tracing adds: the gateway's,
the scheduler's and its relay's line of the job, each with its trace id, rendered as the
services render them), off and on, in the same run.

    .venv/bin/python bench/tracing.py [--jobs N] [--json]

``bench/pipeline.py`` runs it as its tracing phase (``phase_tracing``) and sets the cost
beside the services' CPU per job that its end-to-end phase measured in the same run.

Off is the default (``STRATUS_OTEL__ENDPOINT`` unset): each hook tests a flag. On, the spans
are exported over OTLP gRPC to a real receiver (``tools/otlp_receiver.py``) in a process of its
own, so that the figure is the exporting side's (this process's CPU, the SDK's batch export
thread included, flushed before the clock stops). Prints CPU per job in microseconds and the
ratio on/off; the spans the receiver counted confirm the export.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import tracing  # noqa: E402
from shared.events import JobDispatched  # noqa: E402
from shared.logging import configure_logging, get_logger  # noqa: E402

SPANS_PER_JOB = 5
log = get_logger("bench.tracing")


def one_job() -> None:
    job = JobDispatched(job_id=uuid.uuid4(), device="cpu", kernel="montecarlo_pi")
    body = job.to_bytes()  # the scheduler serialises it, traced or not
    tracing.submitted(job.job_id, time.time_ns())
    traced = tracing.enabled()
    if traced:  # the gateway's line of the submission, as services/gateway/jobs/routes.py
        with tracing.about(job.job_id, job.job_id, "submit"):
            log.info("job_submitted", job_id=str(job.job_id), tenant_id=str(job.tenant_id))
    if traced:  # the scheduler's span and line, as services/scheduler/service.py
        tracing.dispatched([(job.job_id, job.event_id)], time.time_ns(), "cpu")
        with tracing.about(job.job_id, job.event_id):
            log.info("job_dispatched", job_id=str(job.job_id), device="cpu")
    headers = tracing.message_headers(job.routing_key, body) if traced else None
    if traced:  # the relay's line, as shared/db/outbox.py
        ids = tracing.dispatch_of(job.routing_key, body)
        assert ids is not None
        with tracing.about(*ids):
            log.info("job_dispatch_published", job_id=str(ids[0]), message_id=str(job.event_id))
    traceparent = headers["traceparent"] if headers else None
    with (
        tracing.received(job.job_id, job.event_id, traceparent),
        tracing.span("worker.claim", job_id=job.job_id, worker="bench"),
    ):
        with tracing.span("kernel montecarlo_pi", attempt=1):
            pass
        with tracing.span("worker.finish", state="SUCCEEDED", attempt=1):
            pass


def baseline() -> None:
    """What a job's hooks are measured against: the same event built and serialised."""
    job = JobDispatched(job_id=uuid.uuid4(), device="cpu", kernel="montecarlo_pi")
    job.to_bytes()


def cpu_per_job_us(fn: object, jobs: int, *, flush: bool = False) -> float:
    assert callable(fn)
    start = time.process_time()
    for _ in range(jobs):
        fn()
    if flush:
        assert tracing.flush(60), "the spans were not all exported"
    return (time.process_time() - start) / jobs * 1e6


def measure(jobs: int) -> dict[str, float]:
    """CPU per job in microseconds: the reference, the hooks off and on (beyond the
    reference), and the spans the receiver counted."""
    # the services' log configuration, its lines thrown away (the rendering is measured)
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
    try:
        configure_logging("bench")
    finally:
        sys.stdout = stdout
    base = cpu_per_job_us(baseline, jobs)
    off = cpu_per_job_us(one_job, jobs) - base
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tools.otlp_receiver"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        endpoint = receiver.stdout.readline().strip()
        tracing.setup_tracing("bench", endpoint)
        on = cpu_per_job_us(one_job, jobs, flush=True) - base
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=30)
    received = int(out.strip().splitlines()[-1]) if out.strip() else 0
    return {"jobs": jobs, "reference_us": base, "off_us": off, "on_us": on, "spans": received}


def describe(m: dict[str, float]) -> list[str]:
    base, off, on = m["reference_us"], m["off_us"], m["on_us"]
    return [
        f"jobs: {m['jobs']:.0f}; reference (one dispatch event built and serialised): "
        f"{base:.1f} us",
        f"tracing hooks, CPU per job beyond the reference: off {off:.2f} us, on {on:.1f} us",
        f"ratio to the reference: off {off / base:.2f}x, on {on / base:.1f}x",
        f"spans received: {m['spans']:.0f} of {m['jobs'] * SPANS_PER_JOB:.0f} sent",
    ]


def phase_tracing(e2e_runs: list[dict[str, Any]], jobs: int = 2000) -> dict[str, Any]:
    """The pipeline's tracing phase: this script in a process of its own (tracing stays off
    in the benchmark's), its cost on set beside the median CPU per job of the services
    (gateway, scheduler, worker) over the end-to-end phase's runs (``e2e_runs``, each with
    its ``cpu_ms_per_job``)."""
    print(
        f"\n[4] Tracing: its hooks' CPU per job, off and on (OTLP to a local receiver), "
        f"{jobs} jobs",
        flush=True,
    )
    run = subprocess.run(
        [sys.executable, str(Path(__file__)), "--jobs", str(jobs), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    m: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    for line in describe(m):
        print(f"    {line}", flush=True)
    per_run = [sum(r.get("cpu_ms_per_job", {}).get(k, 0.0) for k in SERVICES) for r in e2e_runs]
    services = statistics.median(per_run) * 1000 if per_run else 0.0
    if services > 0:
        m["services_us_per_job"] = services
        m["on_share"] = m["on_us"] / services
        print(
            f"  => tracing on adds {m['on_us']:.0f} us of CPU per job, "
            f"{100 * m['on_share']:.1f} % of the {services:.0f} us that gateway, scheduler and "
            "worker spent per job in the end-to-end phase of this run; off "
            f"{m['off_us']:.2f} us ({100 * m['off_us'] / services:.3f} %)",
            flush=True,
        )
    return m


SERVICES = ("gateway", "scheduler", "worker")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--json", action="store_true", help="one JSON line of the figures")
    a = p.parse_args()
    m = measure(a.jobs)
    if a.json:
        print(json.dumps(m))
        return
    for line in describe(m):
        print(line)


if __name__ == "__main__":
    main()
