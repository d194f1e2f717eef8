"""``KEY=VALUE`` options (``--param``, ``--label``, ``--quota`` ...) read into a mapping."""

from __future__ import annotations

import json
from typing import Any

import typer


def json_or_text(value: str) -> Any:
    """``10`` is a number, ``true`` a boolean, ``[1, 2]`` a list, ``null`` a null; anything
    that does not parse as JSON is the text itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def pairs(values: list[str] | None, option: str, *, as_json: bool = False) -> dict[str, Any]:
    """``["a=1", "b=x"]`` as ``{"a": "1", "b": "x"}`` (values as JSON with ``as_json``); a
    value without ``=`` is a usage error naming ``option``."""
    found: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        found[key] = json_or_text(value) if as_json else value
    return found
