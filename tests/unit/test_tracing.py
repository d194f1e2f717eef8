"""shared.tracing with tracing off (the default): every hook a no-op; the derived ids."""

from __future__ import annotations

import re
import uuid

import pytest

from shared import tracing


def test_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_ENV, raising=False)
    assert tracing.setup_tracing("test") is False
    assert tracing.enabled() is False
    job, event = uuid.uuid4(), uuid.uuid4()
    tracing.submitted(job, 0)
    tracing.dispatched([(job, event)], 0, "cpu")
    with tracing.received(job, event), tracing.span("worker.claim") as s:
        assert s is None  # nothing is made
        assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with tracing.about(job, job, "submit") as s:
        assert s is None  # no current span: the log line has no trace id
        assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    assert tracing.current_span() is None
    tracing.span_between("worker.element", tracing.current_span(), 0, 1)  # nothing is made


def test_derived_ids_are_stable_and_valid() -> None:
    job, event = uuid.uuid4(), uuid.uuid4()
    assert tracing.span_id(job, "submit") == tracing.span_id(job, "submit")
    assert tracing.span_id(job, "submit") != tracing.span_id(job)
    assert 0 < tracing.span_id(event) < 2**64
    header = tracing.traceparent_of(job, event)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", header)
    assert header.split("-")[1] == job.hex
    assert int(header.split("-")[2], 16) == tracing.span_id(event)


def test_dispatch_messages_carry_a_traceparent() -> None:
    from shared.events import ChunkDispatched, JobDispatched

    job = JobDispatched(job_id=uuid.uuid4(), device="cpu", kernel="saxpy")
    headers = tracing.message_headers(job.routing_key, job.to_bytes())
    assert headers == {"traceparent": tracing.traceparent_of(job.job_id, job.event_id)}
    chunk = ChunkDispatched(chunk_id=uuid.uuid4(), device="cpu", kernel="saxpy")
    assert tracing.message_headers(chunk.routing_key, chunk.to_bytes()) is None
    assert tracing.message_headers("job.dispatch.cpu", b"not json") is None
    assert tracing.message_headers("tenant.changed", job.to_bytes()) is None
