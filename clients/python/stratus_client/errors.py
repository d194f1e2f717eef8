"""What the client raises: the API's problems (RFC 9457) as ``ApiError``, and the client's own
errors."""

from __future__ import annotations

import json
from typing import Any

import httpx

from stratus_client.retry import parse_retry_after


class StratusError(Exception):
    """The base of every error this package raises (transport errors stay httpx's)."""


class ConfigurationError(StratusError):
    """The client cannot be built: no base URL or no API key."""


class ApiError(StratusError):
    """A 4xx or 5xx answer of the API: its problem document's fields.

    ``type`` names the kind of error (stable: compare against it, not against ``title``),
    ``errors`` lists the fields that failed validation (``[{"loc": [...], "msg": ...}]``), and
    ``retry_after`` is the ``Retry-After`` header in seconds when the answer had one."""

    def __init__(
        self,
        status: int,
        *,
        type: str = "about:blank",
        title: str = "",
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after
        self.body = body

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The problem in ``response`` (read already); a body that is not a problem document
        (a proxy's page, say) gives its reason phrase as the title and its text as detail."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return cls(
                response.status_code,
                title=response.reason_phrase,
                detail=response.text[:500],
                retry_after=retry_after,
                body=body,
            )
        errors = body.get("errors")
        return cls(
            response.status_code,
            type=str(body.get("type", "about:blank")),
            title=str(body.get("title", response.reason_phrase)),
            detail=str(body.get("detail", "")),
            errors=errors if isinstance(errors, list) else None,
            retry_after=retry_after,
            body=body,
        )


class WaitTimeout(StratusError, TimeoutError):
    """``wait`` gave up before the job or migration reached a final state; ``last`` is what
    was seen last."""

    def __init__(self, what: str, timeout: float, last: Any) -> None:
        super().__init__(f"{what} was not final after {timeout:g}s")
        self.last = last
