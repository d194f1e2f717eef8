"""Every route answers 422 for a query parameter it does not declare.

A filter that is silently ignored returns someone the wrong rows (``?lable=run:7`` lists
every job), so the gateway refuses any query parameter that neither the route nor one of its
dependencies declares. ``reject_undeclared_query`` is an app-wide dependency
(``FastAPI(dependencies=[...])``): FastAPI runs it before every route's own dependencies, so
routers added later are covered without doing anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

UNKNOWN = "unknown query parameter"

# Per route (by identity: routes compare by value and do not hash), worked out on first use.
_declared: dict[int, tuple[APIRoute, frozenset[str]]] = {}


def declared_query(dependant: Dependant) -> frozenset[str]:
    """The query parameter names ``dependant`` and its sub-dependencies read (by alias; the
    fields of a ``Query()`` model count one by one)."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        for field in current.query_params:
            names.update(_names(field.field_info.annotation, field.alias))
        stack.extend(current.dependencies)
    return frozenset(names)


def _names(annotation: object, alias: str) -> Iterable[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or name for name, f in annotation.model_fields.items()]
    return [alias]


def undeclared(route: APIRoute, given: Iterable[str]) -> list[str]:
    """The names in ``given`` that ``route`` does not declare, once each, in order."""
    cached = _declared.get(id(route))
    if cached is None or cached[0] is not route:
        cached = _declared[id(route)] = (route, declared_query(route.dependant))
    known = cached[1]
    return list(dict.fromkeys(name for name in given if name not in known))


async def reject_undeclared_query(request: Request) -> None:
    route = request.scope.get("route")
    if not request.scope.get("query_string") or not isinstance(route, APIRoute):
        return  # most requests (every submission) carry no query string at all
    unknown = undeclared(route, request.query_params.keys())
    if unknown:
        # Answered like any other parameter that does not match the route's schema.
        raise RequestValidationError(
            [
                {"type": "unknown_query_parameter", "loc": ("query", name), "msg": UNKNOWN}
                for name in unknown
            ]
        )
