"""Domain exceptions, defined once. Each app maps them to HTTP in one table (``problems``)."""

from __future__ import annotations

from typing import Any


class StratusError(Exception):
    """Base of every domain error; ``detail`` is safe to show to the caller, and
    ``retry_after`` (seconds, sent as ``Retry-After``) says when trying again may succeed:
    ``None`` for an error that waiting does not cure."""

    title = "Error"
    default_retry_after: float | None = None

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = self.default_retry_after if retry_after is None else retry_after


class NotFound(StratusError):
    title = "Not found"


class Conflict(StratusError):
    title = "Conflict"


class Invalid(StratusError):
    """Input that passed the schema but breaks a rule (unknown kernel, bad params...)."""

    title = "Invalid request"

    def __init__(self, detail: str = "", errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class IdempotencyKeyReused(Invalid):
    """An ``Idempotency-Key`` the tenant already sent, within its window, with another body:
    replaying the first answer would hide that this request was never carried out."""

    title = "Idempotency-Key reused"


class QuotaExceeded(StratusError):
    """Storing this would take the tenant over its ``storage_bytes`` quota (413)."""

    title = "Payload too large"


class Unauthorized(StratusError):
    title = "Unauthorized"


class Forbidden(StratusError):
    title = "Forbidden"


class TooManyRequests(StratusError):
    title = "Too many requests"
    default_retry_after = 1.0


class DependencyUnavailable(StratusError):
    """A dependency (database, broker, cache) is down or its circuit is open."""

    title = "Service unavailable"
    default_retry_after = 1.0


class IllegalTransition(Conflict):
    title = "Illegal state transition"
