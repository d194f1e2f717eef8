"""Domain exceptions, defined once. Each app maps them to HTTP in one table (``problems``)."""

from __future__ import annotations

from typing import Any


class StratusError(Exception):
    """Base of every domain error; ``detail`` is safe to show to the caller."""

    title = "Error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


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

    def __init__(self, detail: str = "", retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class DependencyUnavailable(StratusError):
    """A dependency (database, broker, cache) is down or its circuit is open."""

    title = "Service unavailable"

    def __init__(self, detail: str = "", retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class IllegalTransition(Conflict):
    title = "Illegal state transition"
