"""Request bodies at the edge: bounded in size and in time while they stream, before any route
parses them or looks a key up.

``BodyLimitMiddleware`` wraps the ASGI ``receive`` of every request that has a body. Whoever
reads the body (FastAPI parsing JSON, a dataset upload streaming to storage) gets a 413 the
moment the bytes pass the limit and a 408 when the body stops arriving in time; the answer is
rendered by the app's error table (``shared.problems``). Chunked bodies are counted exactly as
declared ones: the count is of the bytes received, not of what a header promised.

A dataset upload (``PUT /v1/datasets/{name}``) is bounded by the tenant's storage quota
instead, which the route enforces while it streams; the route authenticates before it reads a
byte, so a request without a valid key is refused having sent at most what the server's
socket buffers hold. Any answer sent before the body was read whole closes the connection, so
the rest of that body is never read either.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger
from shared.problems import http_problem

log = get_logger(__name__)

CLOSE = {"Connection": "close"}


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # every body but an upload's
    timeout_s: float  # the whole body of a request that is not an upload
    idle_timeout_s: float  # the longest pause between two pieces of any body


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"bodies are limited to {max_bytes} bytes", headers=CLOSE)


class BodyTimeout(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(408, detail, headers=CLOSE)


class LengthRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(
            411,
            "an upload declares its length: Content-Length (0 for an empty dataset) "
            "or Transfer-Encoding: chunked",
            headers=CLOSE,
        )


def is_upload(scope: Scope) -> bool:
    return scope["method"] == "PUT" and str(scope["path"]).startswith("/v1/datasets/")


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def is_chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])


class BodyLimitMiddleware:
    """Size and time limits on every request body, counted as it streams (see the module)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = is_upload(scope)
        length = declared_length(scope)
        chunked = is_chunked(scope)
        refusal = self._refusal(upload=upload, length=length, chunked=chunked)
        if refusal is not None:
            await http_problem(refusal)(scope, receive, send)
            return
        if not chunked and not length:  # no body at all: nothing to bound
            await self.app(scope, receive, send)
            return
        body = _BoundedBody(scope, receive, send, self.limits, upload=upload)
        await self.app(scope, body.receive, body.send)

    def _refusal(self, *, upload: bool, length: int | None, chunked: bool) -> HTTPException | None:
        """An answer known from the headers alone, before a byte of the body is read."""
        if upload and length is None and not chunked:
            return LengthRequired()
        if not upload and length is not None and length > self.limits.max_bytes:
            return BodyTooLarge(self.limits.max_bytes)
        return None


class _BoundedBody:
    """One request's ``receive`` and ``send``, as the app sees them."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, limits: BodyLimits, *, upload: bool
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limits = limits
        self.max_bytes = None if upload else limits.max_bytes
        loop = asyncio.get_running_loop()
        self.deadline = None if upload else loop.time() + limits.timeout_s
        self.received = 0
        self.complete = False  # the last piece (or the client's disconnect) has been seen

    async def receive(self) -> Message:
        if self.complete:  # after the body: a wait for the disconnect, which takes its time
            return await self._receive()
        message = await self._next_piece()
        if message["type"] == "http.disconnect":
            self.complete = True
            log.info(
                "client_disconnected",
                method=self.scope["method"],
                path=self.scope["path"],
                body_bytes=self.received,
            )
            return message
        self.received += len(message.get("body", b""))
        if self.max_bytes is not None and self.received > self.max_bytes:
            raise BodyTooLarge(self.max_bytes)
        self.complete = not message.get("more_body", False)
        return message

    async def _next_piece(self) -> Message:
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + self.limits.idle_timeout_s
        until = idle_until if self.deadline is None else min(idle_until, self.deadline)
        try:
            async with asyncio.timeout_at(until):
                return await self._receive()
        except TimeoutError:
            raise BodyTimeout(self._late(idle=until == idle_until)) from None

    def _late(self, *, idle: bool) -> str:
        if idle:
            return f"the body paused for more than {self.limits.idle_timeout_s:g} s"
        return f"the body did not arrive within {self.limits.timeout_s:g} s"

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.complete:
            # An answer before the whole body: the rest of it is never read.
            headers = list(message.get("headers", []))
            if all(name.lower() != b"connection" for name, _ in headers):
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await self._send(message)
