"""Traces (OpenTelemetry): one trace per job, across the gateway, the scheduler and a worker.

Off unless ``STRATUS_OTEL__ENDPOINT`` is set (an OTLP gRPC endpoint, e.g.
``http://collector:4317``): then each service exports its spans there in batches. Off, every
hook below is one test of a module-level flag; nothing is allocated, nothing is exported.

A job's trace id is its UUID, and the id of each span a later service parents on is derived
from ids that service already holds, so no column and no message field is added for it:

- ``POST /v1/jobs`` (gateway): the trace's root span, id ``span_id(job_id, "submit")``;
- ``scheduler.dispatch``: a child of the root, id ``span_id(dispatch event id)``; the outbox
  relay publishes the ``job.dispatch`` message with its W3C ``traceparent`` header, which the
  worker that receives it parents on;
- ``worker.claim`` (a child of the dispatch), and under it ``kernel <name>`` and
  ``worker.finish`` (the record of the attempt).

A migration likewise: ``POST /v1/migrations`` (the root, the trace id the migration's id), and
the datamover's ``datamover.migrate`` under it.

While a worker runs a job its claim span is the current span, so the trace id is in every log
line of that work (``add_trace_ids``, a structlog processor). The services that handle a job
before it (the gateway's submission, the scheduler's dispatch, the outbox relay publishing the
dispatch) log one line per job while tracing is on, in ``about``: that line carries the job's
trace id and the id of the span it belongs to. Tracing off, they log nothing more.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Coroutine, Iterator, MutableMapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, TypeVar

import orjson
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    format_span_id,
    format_trace_id,
)

ENDPOINT_ENV = "STRATUS_OTEL__ENDPOINT"
T = TypeVar("T")

_enabled = False
_tracer: trace.Tracer = trace.NoOpTracer()
_flush: Any = None  # the provider's force_flush, once set up
# ids the next span takes (trace id, span id): how a span gets the id other services derive
_forced: ContextVar[tuple[int | None, int] | None] = ContextVar("stratus_forced_ids", default=None)


def enabled() -> bool:
    return _enabled


def setup_tracing(service: str, endpoint: str | None = None) -> bool:
    """Export this process's spans over OTLP when ``endpoint`` (default: the environment's
    ``STRATUS_OTEL__ENDPOINT``) is set; returns whether tracing is on."""
    global _enabled, _tracer, _flush
    endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV, "")
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _Ids(RandomIdGenerator):
        """Random ids, except where a hook asked for the derived ones."""

        def generate_span_id(self) -> int:
            forced = _forced.get()
            return forced[1] if forced else super().generate_span_id()

        def generate_trace_id(self) -> int:
            forced = _forced.get()
            if forced and forced[0] is not None:
                return forced[0]
            return super().generate_trace_id()

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"stratus-{service}"}), id_generator=_Ids()
    )
    insecure = not endpoint.startswith("https://")
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
    )
    _tracer = provider.get_tracer("stratus")
    _flush = provider.force_flush
    _enabled = True
    return True


def flush(timeout_s: float = 10.0) -> bool:
    """Export the spans still batched (a benchmark's or a test's end); True when all went."""
    return bool(_flush(int(timeout_s * 1000))) if _flush is not None else True


def span_id(key: uuid.UUID, what: str = "") -> int:
    """A nonzero 64-bit span id derived from ``key`` (and ``what``)."""
    digest = hashlib.blake2b(key.bytes + what.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def _parent(trace_id: int, parent_span_id: int) -> Any:
    ctx = SpanContext(
        trace_id=trace_id,
        span_id=parent_span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def traceparent_of(job_id: uuid.UUID, dispatch_event_id: uuid.UUID) -> str:
    """The W3C ``traceparent`` of a ``job.dispatch`` message: the job's trace, the dispatch
    span."""
    return f"00-{format_trace_id(job_id.int)}-{format_span_id(span_id(dispatch_event_id))}-01"


def submitted(job_id: Any, start_ns: int, name: str = "POST /v1/jobs") -> None:
    """The root span of a job's (or a migration's) trace: its submission, from ``start_ns``
    until now."""
    if not _enabled:
        return
    try:
        job_id = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return
    token = _forced.set((job_id.int, span_id(job_id, "submit")))
    try:
        span = _tracer.start_span(
            name,
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root, whatever is current
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={"stratus.job_id": str(job_id), "http.request.method": "POST"},
        )
    finally:
        _forced.reset(token)
    span.end()


def dispatched(jobs: list[tuple[uuid.UUID, uuid.UUID]], start_ns: int, device: str) -> None:
    """One ``scheduler.dispatch`` span per ``(job id, dispatch event id)`` sent, from
    ``start_ns`` until now, a child of the job's submission."""
    if not _enabled:
        return
    for job_id, event_id in jobs:
        token = _forced.set((None, span_id(event_id)))
        try:
            span = _tracer.start_span(
                "scheduler.dispatch",
                context=_parent(job_id.int, span_id(job_id, "submit")),
                kind=SpanKind.PRODUCER,
                start_time=start_ns,
                attributes={
                    "stratus.job_id": str(job_id),
                    "stratus.device": device,
                    "messaging.message.id": str(event_id),
                },
            )
        finally:
            _forced.reset(token)
        span.end()


def dispatch_of(routing_key: str, body: bytes) -> tuple[uuid.UUID, uuid.UUID] | None:
    """``(job id, dispatch event id)`` of an outbox message that is a job's dispatch."""
    if not routing_key.startswith("job.dispatch."):
        return None
    try:
        fields = orjson.loads(body)
        if fields.get("type") != "job.dispatch":
            return None
        return uuid.UUID(fields["job_id"]), uuid.UUID(fields["event_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def message_headers(routing_key: str, body: bytes) -> dict[str, Any] | None:
    """The AMQP headers of an outbox message: a job dispatch's W3C ``traceparent``."""
    ids = dispatch_of(routing_key, body)
    return {"traceparent": traceparent_of(*ids)} if ids else None


def about(trace_of: uuid.UUID, parent: uuid.UUID, what: str = "") -> Any:
    """Context manager: the span ``span_id(parent, what)`` of ``trace_of``'s trace (the trace
    id of a job is its id) is the current span, so that the log lines logged in it carry their
    ids (``add_trace_ids``); a no-op while tracing is off. E.g. ``about(job_id, job_id,
    "submit")``, the submission; ``about(job_id, dispatch_event_id)``, the dispatch."""
    if not _enabled:
        return nullcontext()
    return trace.use_span(
        NonRecordingSpan(
            SpanContext(
                trace_id=trace_of.int,
                span_id=span_id(parent, what),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        ),
        end_on_exit=False,
    )


_W3C = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def received(
    job_id: uuid.UUID, dispatch_event_id: uuid.UUID, traceparent: str | None = None
) -> Any:
    """Context manager: the dispatch of the job received is the current (remote) span, so the
    spans below (``span``) join the job's trace. The message's ``traceparent`` names it; a
    message without one (published while tracing was off) by the ids it derives from."""
    if not _enabled:
        return nullcontext()
    found = _W3C.fullmatch(traceparent) if traceparent else None
    if found and int(found[1], 16) and int(found[2], 16):
        trace_id, parent = int(found[1], 16), int(found[2], 16)
        _via.set("traceparent")
    else:
        trace_id, parent = job_id.int, span_id(dispatch_event_id)
        _via.set("derived")
    return trace.use_span(
        NonRecordingSpan(
            SpanContext(
                trace_id=trace_id,
                span_id=parent,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        ),
        end_on_exit=False,
    )


# how the current work found its trace's parent: a span attribute, for who reads the trace
_via: ContextVar[str] = ContextVar("stratus_trace_parent_via", default="")


def traced_run(
    name: str, root: uuid.UUID, work: Coroutine[Any, Any, T], **attributes: Any
) -> Coroutine[Any, Any, T]:
    """``work`` run in a span ``name``, a child of the submission of ``root`` (a migration's
    id, an array's); ``work`` itself while tracing is off."""
    if not _enabled:
        return work
    return _traced_run(name, root, work, attributes)


async def _traced_run(
    name: str, root: uuid.UUID, work: Coroutine[Any, Any, T], attributes: dict[str, Any]
) -> T:
    attrs = {"stratus.id": str(root), **{k: str(v) for k, v in attributes.items()}}
    with _tracer.start_as_current_span(
        name, context=_parent(root.int, span_id(root, "submit")), attributes=attrs
    ):
        return await work


def span(name: str, **attributes: Any) -> Any:
    """Context manager: a span, a child of the current one (a no-op while tracing is off)."""
    if not _enabled:
        return nullcontext()
    return _span(name, attributes)


@contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    attrs = {k: str(v) for k, v in attributes.items()}
    if _via.get():
        attrs["stratus.parent_from"] = _via.get()
    with _tracer.start_as_current_span(name, attributes=attrs) as s:
        yield s


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ``trace_id`` and ``span_id`` on the line."""
    if _enabled:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict.setdefault("trace_id", format_trace_id(ctx.trace_id))
            event_dict.setdefault("span_id", format_span_id(ctx.span_id))
    return event_dict


def current_span() -> Any:
    """The current span, to parent spans on later (from a callback, another task); None
    while tracing is off."""
    return trace.get_current_span() if _enabled else None


def span_between(name: str, parent: Any, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A span ``name`` of what ran from ``start_ns`` to ``end_ns``, a child of ``parent`` (a
    ``current_span()``; nothing when it is None)."""
    if parent is None or not _enabled:
        return
    attrs = {k: str(v) for k, v in attributes.items()}
    _tracer.start_span(
        name, context=trace.set_span_in_context(parent), start_time=start_ns, attributes=attrs
    ).end(end_time=end_ns)
