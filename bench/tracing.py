"""What tracing costs a job: the CPU time of the tracing hooks of one job (the gateway's
submission span, the scheduler's dispatch span, the relay's ``traceparent`` header, the
worker's claim, kernel and finish spans), off and on, in the same run.

    .venv/bin/python bench/tracing.py [--jobs N]

Off is the default (``STRATUS_OTEL__ENDPOINT`` unset): each hook tests a flag. On, the spans
are exported over OTLP gRPC to a real receiver (``tools/otlp_receiver.py``) in a process of its
own, so that the figure is the exporting side's (this process's CPU, the SDK's batch export
thread included, flushed before the clock stops). Prints CPU per job in microseconds and the
ratio on/off; the spans the receiver counted confirm the export.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import tracing  # noqa: E402
from shared.events import JobDispatched  # noqa: E402

SPANS_PER_JOB = 5


def one_job() -> None:
    job = JobDispatched(job_id=uuid.uuid4(), device="cpu", kernel="montecarlo_pi")
    body = job.to_bytes()  # the scheduler serialises it, traced or not
    tracing.submitted(job.job_id, time.time_ns())
    traced = tracing.enabled()
    if traced:
        tracing.dispatched([(job.job_id, job.event_id)], time.time_ns(), "cpu")
    headers = tracing.message_headers(job.routing_key, body) if traced else None
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=5000)
    a = p.parse_args()
    base = cpu_per_job_us(baseline, a.jobs)
    off = cpu_per_job_us(one_job, a.jobs) - base
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tools.otlp_receiver"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        endpoint = receiver.stdout.readline().strip()
        tracing.setup_tracing("bench", endpoint)
        on = cpu_per_job_us(one_job, a.jobs, flush=True) - base
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=30)
    received = int(out.strip().splitlines()[-1]) if out.strip() else 0
    print(f"jobs: {a.jobs}; reference (one dispatch event built and serialised): {base:.1f} us")
    print(f"tracing hooks, CPU per job beyond the reference: off {off:.2f} us, on {on:.1f} us")
    print(f"ratio to the reference: off {off / base:.2f}x, on {on / base:.1f}x")
    print(f"spans received: {received} of {a.jobs * SPANS_PER_JOB} sent")


if __name__ == "__main__":
    main()
