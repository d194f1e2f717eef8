"""RFC 9457 problem+json responses: one mapping table from domain errors to HTTP."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from shared import errors
from shared.db.engine import is_connectivity_error, is_overload_error
from shared.logging import get_logger
from shared.resilience import CircuitOpen

log = get_logger(__name__)

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"

# Every problem's ``type`` is this base and a kind, one kind per kind of error; docs/PROBLEMS.md
# lists them. A domain error's kind is its class name in kebab case (``NotFound``:
# ``not-found``), so a new error class names its own kind.
PROBLEM_BASE = "https://stratus.dev/problems/"
KIND_PATTERN = r"^https://stratus\.dev/problems/[a-z0-9]+(-[a-z0-9]+)*$"

# The kind of a 503 for want of database connections: not an outage, retry shortly.
OVERLOADED = "overloaded"

# The kind of an answer that is not a domain error, by its status.
HTTP_KINDS: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    409: "conflict",
    411: "length-required",
    413: "payload-too-large",
    422: "validation-failed",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}
HTTP_TITLES: dict[int, str] = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    411: "Length required",
    413: "Payload too large",
}


def problem_type(kind: str) -> str:
    return PROBLEM_BASE + kind


def error_kind(cls: type[errors.StratusError]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


class ProblemError(BaseModel):
    """One reason a request was invalid: where (``loc``) and why (``msg``)."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem document: every error answer of every Stratus service."""

    type: str = Field(
        description="a URI naming the kind of problem (one per kind, listed in docs/PROBLEMS.md)",
        pattern=KIND_PATTERN,
        examples=[problem_type("not-found")],
    )
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[ProblemError] | None = Field(
        default=None, description="validation errors (422 only)"
    )


STATUS: dict[type[errors.StratusError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Invalid: 422,
    errors.QuotaExceeded: 413,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.TooManyRequests: 429,
    errors.DependencyUnavailable: 503,
}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json answer; ``kind`` defaults to the one its status implies."""
    kind = kind or HTTP_KINDS.get(status, "http-error")
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return ProblemResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class ProblemResponse(JSONResponse):
    """A problem that always renders: text taken from the request (a JSON key, a name) may
    hold a lone surrogate, which UTF-8 cannot encode; it goes out as U+FFFD."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(_encodable(content))


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    return value


def _status_for(exc: errors.StratusError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


async def _domain(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.StratusError)
    status = _status_for(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = retry_after_header(exc.retry_after)
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.Invalid) and exc.errors:
        extra["errors"] = exc.errors
    return problem(
        status, exc.title, exc.detail, kind=error_kind(type(exc)), headers=headers, **extra
    )


def _jsonable_loc(loc: Any) -> list[Any]:
    return [part if isinstance(part, int | str) else str(part) for part in loc]


async def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = [{"loc": _jsonable_loc(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return problem(
        422,
        "Validation failed",
        "The request does not match the schema.",
        kind="validation-failed",
        errors=errs,
    )


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # The router names only the methods of the first route whose path matched; a path
        # served by several routes (GET and POST /v1/jobs) has all of theirs.
        headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
        exc = HTTPException(405, exc.detail, headers=headers)
    return http_problem(exc)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app serves at the request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def http_problem(exc: HTTPException) -> JSONResponse:
    """The answer for an ``HTTPException``, raised by a route or by the edge's middleware."""
    status = exc.status_code
    title = HTTP_TITLES.get(status) or _phrase(status)
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem(status, title, detail, headers=exc.headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


async def _client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    # Nobody reads this answer; the edge logged the disconnect in one line.
    return problem(400, "Client disconnected", "The client went away before its body arrived.")


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def unavailable(
    detail: str,
    retry_after: float,
    *,
    title: str = "Service unavailable",
    kind: str = "dependency-unavailable",
) -> JSONResponse:
    """A 503 that says when to try again."""
    headers = {"Retry-After": retry_after_header(retry_after)}
    return problem(503, title, detail, kind=kind, headers=headers)


async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency_unavailable", dependency="postgres", error=type(exc).__name__)
    return unavailable("The database is unavailable; retry later.", 2)


async def _circuit_open(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CircuitOpen)
    return unavailable(f"{exc.name} is unavailable; retry later.", exc.retry_after)


async def _overloaded(_request: Request, _exc: Exception) -> JSONResponse:
    return unavailable(
        "Every database connection is busy; retry shortly.",
        1,
        title="Service overloaded",
        kind=OVERLOADED,
    )


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    return problem(500, "Internal error", "An unexpected error occurred.")


def install_problem_handlers(app: FastAPI) -> None:
    """The error table above, and an OpenAPI document that describes its answers."""
    document_problems(app)
    app.add_exception_handler(errors.StratusError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    for exc_type in (OperationalError, InterfaceError, ConnectionError):
        app.add_exception_handler(exc_type, _database_down)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(PoolTimeout, _overloaded)
    app.add_exception_handler(DBAPIError, _db_api)
    app.add_exception_handler(asyncpg.InsufficientResourcesError, _db_refused)
    app.add_exception_handler(CircuitOpen, _circuit_open)
    app.add_exception_handler(Exception, _unhandled)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    # A file's error (a directory where a file should be, a full disk) is not the database's.
    if is_connectivity_error(exc):
        return await _database_down(request, exc)
    return await _unhandled(request, exc)


async def _db_api(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated:
        return await _database_down(request, exc)
    return await _db_refused(request, exc)


async def _db_refused(request: Request, exc: Exception) -> JSONResponse:
    if is_overload_error(exc):  # too many connections: the server's, not the request's
        log.warning("database_overloaded", error=type(exc).__name__)
        return await _overloaded(request, exc)
    return await _unhandled(request, exc)


def problem_responses(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, each a ``Problem`` (problem+json)."""
    return {code: _problem_response(desc) for code, desc in codes.items()}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}}}


def document_problems(app: FastAPI) -> None:
    """Post-process the app's OpenAPI document once: ``Problem`` in the components, and
    every 422 (FastAPI declares its own ``HTTPValidationError`` there, which the handler
    above never sends) as a ``Problem``, and for every request body the 400 (not parseable:
    not UTF-8, say) and the 413 (over the size limit) that any body can get."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()  # FastAPI caches the document; the first call amends it in place
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in schemas:
            _amend(doc, schemas)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _amend(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                description = responses["422"].get("description") or "validation failed"
                if description == "Validation Error":  # FastAPI's own
                    description = "validation failed"
                responses["422"] = _problem_response(description)
            if "requestBody" in operation:
                responses.setdefault("400", _problem_response("the body could not be parsed"))
                responses.setdefault("413", _problem_response("the body is over the size limit"))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
