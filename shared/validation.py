"""Field types shared by request bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes a number with no fractional part (``5.0``): take it
    as the integer it is. Anything else goes on to strict validation as sent (``true``,
    ``"5"`` and ``5.5`` stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
# An integer in a strictly validated body: not a bool, not a string, but 5.0 is 5. Where the
# field may also be null, give its bounds before ``INTEGRAL``
# (``Annotated[int, Field(ge=0), INTEGRAL] | None``): bounds given after a validator are
# applied by it, and the JSON schema no longer shows them as ``minimum``/``maximum``.
JsonInt = Annotated[int, INTEGRAL]
