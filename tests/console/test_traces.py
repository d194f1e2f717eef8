"""Traces on a real cluster exported to a real OTLP gRPC receiver: a job's spans, from the
HTTP request through the scheduler's dispatch (the outbox, then RabbitMQ with a W3C
``traceparent`` header) to the worker's claim, kernel and finish, form one trace (the job's
id) with the right parents, and the log lines of that work in the gateway, the scheduler and
the worker carry its trace id; an array's chunks and their elements have spans in its trace."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tools.cluster import LocalCluster
from tools.otlp_receiver import OtlpReceiver, ReceivedSpan

# the package's cluster starts within the first test (a cold numba cache compiles kernels)
pytestmark = pytest.mark.timeout(600)

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NAMES = {
    "POST /v1/jobs": "stratus-gateway",
    "scheduler.dispatch": "stratus-scheduler",
    "worker.claim": "stratus-worker",
    "kernel montecarlo_pi": "stratus-worker",
    "worker.finish": "stratus-worker",
}


async def test_one_job_is_one_trace(
    console_cluster: LocalCluster, api: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    r = await api.post("/v1/tenants", json={"name": f"traced-{time.time_ns()}"}, headers=ADMIN)
    tid = r.json()["id"]
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "k"}, headers=ADMIN)
    tenant = {"Authorization": f"Bearer {k.json()['key']}"}
    r = await api.post(
        "/v1/jobs",
        json={"kernel": "montecarlo_pi", "params": {"samples": 10000, "seed": 3}},
        headers=tenant,
    )
    assert r.status_code == 201, r.text
    job_id = uuid.UUID(r.json()["id"])
    trace_id = job_id.hex

    deadline = time.monotonic() + 60
    spans: dict[str, ReceivedSpan] = {}
    while time.monotonic() < deadline:
        spans = {s.name: s for s in otlp.spans(trace_id)}
        if set(NAMES) <= set(spans):
            break
        await asyncio.sleep(0.2)
    assert set(NAMES) <= set(spans), f"spans of the job's trace: {sorted(spans)}"
    job = (await api.get(f"/v1/jobs/{job_id}", headers=tenant)).json()
    assert job["state"] == "SUCCEEDED"

    assert len(otlp.spans(trace_id)) == len(NAMES), "one span each, no stray span in the trace"
    for name, service in NAMES.items():
        assert spans[name].service == service, (name, spans[name].service)
    root = spans["POST /v1/jobs"]
    dispatch = spans["scheduler.dispatch"]
    claim = spans["worker.claim"]
    assert root.parent_span_id == ""
    assert dispatch.parent_span_id == root.span_id
    assert claim.parent_span_id == dispatch.span_id
    # the worker found its parent in the job.dispatch message's W3C traceparent header
    assert claim.attributes["stratus.parent_from"] == "traceparent"
    assert spans["kernel montecarlo_pi"].parent_span_id == claim.span_id
    assert spans["worker.finish"].parent_span_id == claim.span_id
    # in order: submitted, dispatched, claimed, run, recorded
    assert root.start_ns <= dispatch.start_ns <= claim.start_ns
    assert claim.start_ns <= spans["kernel montecarlo_pi"].start_ns
    assert spans["kernel montecarlo_pi"].end_ns <= spans["worker.finish"].start_ns

    # the log lines of the job in every service carry its trace id, and the span's they are of:
    # the gateway's submission, the scheduler's dispatch and its relay's publication of it,
    # the worker's record of the attempt
    def lines_of(process: str, event: str) -> list[dict[str, str]]:
        log = console_cluster.log_path(process).read_text()
        lines = [json.loads(x) for x in log.splitlines() if str(job_id) in x and x[:1] == "{"]
        return [x for x in lines if x.get("event") == event]

    for process, event, span in (
        ("gateway", "job_submitted", root),
        ("scheduler", "job_dispatched", dispatch),
        ("scheduler", "job_dispatch_published", dispatch),
        ("worker_00", "attempt_recorded", None),
    ):
        found = lines_of(process, event)
        deadline = time.monotonic() + 10  # a log file is written a moment after the span
        while not found and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            found = lines_of(process, event)
        assert len(found) == 1, f"{process}: {event} lines of the job: {found}"
        assert found[0]["trace_id"] == trace_id, (process, event)
        if span is not None:
            assert found[0]["span_id"] == span.span_id, (process, event)


async def test_one_migration_is_one_trace(
    console_cluster: LocalCluster, api: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    r = await api.post("/v1/tenants", json={"name": f"moved-{time.time_ns()}"}, headers=ADMIN)
    tid = r.json()["id"]
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "k"}, headers=ADMIN)
    tenant = {"Authorization": f"Bearer {k.json()['key']}"}
    put = await api.put("/v1/datasets/traced/a.bin", content=b"x" * 4096, headers=tenant)
    assert put.status_code == 201, put.text
    r = await api.post(
        "/v1/migrations",
        json={"dataset": "traced/a.bin", "to_tier": "archive", "mode": "copy"},
        headers=tenant,
    )
    assert r.status_code == 202, r.text
    migration_id = uuid.UUID(r.json()["id"])
    names = {"POST /v1/migrations": "stratus-gateway", "datamover.migrate": "stratus-datamover"}
    deadline = time.monotonic() + 60
    spans: dict[str, ReceivedSpan] = {}
    while time.monotonic() < deadline:
        spans = {s.name: s for s in otlp.spans(migration_id.hex)}
        if set(names) <= set(spans):
            break
        await asyncio.sleep(0.2)
    assert set(names) <= set(spans), f"spans of the migration's trace: {sorted(spans)}"
    state = (await api.get(f"/v1/migrations/{migration_id}", headers=tenant)).json()["state"]
    assert state == "SUCCEEDED"
    for name, service in names.items():
        assert spans[name].service == service
    assert spans["POST /v1/migrations"].parent_span_id == ""
    assert spans["datamover.migrate"].parent_span_id == spans["POST /v1/migrations"].span_id


async def test_an_array_in_chunks_is_one_trace(
    console_cluster: LocalCluster, api: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    r = await api.post("/v1/tenants", json={"name": f"swept-{time.time_ns()}"}, headers=ADMIN)
    tid = r.json()["id"]
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "k"}, headers=ADMIN)
    tenant = {"Authorization": f"Bearer {k.json()['key']}"}
    r = await api.post(
        "/v1/jobs",
        json={
            "kernel": "montecarlo_pi",
            "params": {"samples": 1000},
            "array": {"size": 6, "index_param": "seed"},
        },
        headers=tenant,
    )
    assert r.status_code == 201, r.text
    array_id = uuid.UUID(r.json()["id"])
    deadline = time.monotonic() + 60
    spans: list[ReceivedSpan] = []
    while time.monotonic() < deadline:
        spans = otlp.spans(array_id.hex)
        state = (await api.get(f"/v1/jobs/{array_id}", headers=tenant)).json()["state"]
        chunks = [s for s in spans if s.name == "worker.chunk"]
        ran = sum(int(s.attributes.get("elements", "0")) for s in chunks)
        indices = {s.attributes["index"] for s in spans if s.name == "worker.element"}
        if state == "SUCCEEDED" and ran >= 6 and len(indices) >= 6:
            break
        await asyncio.sleep(0.2)
    [root] = [s for s in spans if s.name == "POST /v1/jobs"]
    chunks = [s for s in spans if s.name == "worker.chunk"]
    assert chunks, f"spans of the array's trace: {[s.name for s in spans]}"
    assert all(c.parent_span_id == root.span_id for c in chunks)
    assert all(c.service == "stratus-worker" for c in chunks)
    assert sum(int(c.attributes["elements"]) for c in chunks) >= 6
    # each element that ran has a span of its own, under the chunk that ran it
    elements = [s for s in spans if s.name == "worker.element"]
    assert {int(e.attributes["index"]) for e in elements} == set(range(6))
    by_id = {c.span_id: c for c in chunks}
    for e in elements:
        chunk = by_id[e.parent_span_id]
        assert chunk.start_ns <= e.start_ns <= e.end_ns <= chunk.end_ns
        assert e.attributes["stratus.job_id"] == f"{array_id}:{e.attributes['index']}"
        assert e.attributes["state"] == "SUCCEEDED"
        assert e.service == "stratus-worker"
