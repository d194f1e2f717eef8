"""Structured JSON logs (structlog) for every service, with secrets scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.tracing import add_trace_ids, setup_tracing

_SECRET_KEYS = re.compile(r"(key|secret|password|token|authorization)", re.IGNORECASE)
# API keys (sk_...) and webhook signing secrets (whsec_...)
_SECRET_VALUES = re.compile(r"(sk|whsec)_[A-Za-z0-9_-]{8,}")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(r"\1_[redacted]", value)
    return value


def scrub_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop values of secret-looking fields and mask anything that looks like an API key."""
    for k in list(event_dict):
        if k in {"key_id", "key_prefix", "idempotency_key"}:
            continue
        if _SECRET_KEYS.search(k) and k != "event":
            event_dict[k] = "[redacted]"
        else:
            event_dict[k] = _scrub(event_dict[k])
    return event_dict


def configure_logging(service: str, *, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging to one JSON line per event on stdout."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,  # the trace id of the job the line is about, while tracing is on
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    setup_tracing(service)  # OTLP export when STRATUS_OTEL__ENDPOINT is set, else nothing
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would print every request; our middleware logs what matters.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
