"""A TCP proxy on loopback in front of a real server, for tests that break the network on
purpose: the server gone (``stop``, ``start`` again on the same port) or restarting
(``refuse``: connections dropped as they come), every connection cut at once (``cut``), a
connection cut in the middle of what it carries (``cut_on``: half a frame, a transaction, a
part of an upload), and a slow link (``stall``/``resume``, ``latency_s``). The servers
themselves keep running for everything else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter

    def abort(self) -> None:
        """Close both sockets at once, whatever is still buffered (a network cut, not a
        goodbye)."""
        for writer in (self.client, self.server):
            writer.transport.abort()


@dataclass
class _CutOn:
    pattern: bytes
    upstream: bool
    after: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    link: _Link | None = None
    left: int = 0  # bytes still forwarded on ``link`` before the cut, once the pattern is seen


class TcpProxy:
    """Forwards each connection to ``127.0.0.1:target_port`` until the test breaks it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # set by the first start; later starts listen on the same port
        self.accepted: list[float] = []  # when each connection came (the loop's clock)
        self.latency_s = 0.0  # added before each chunk is forwarded, both ways: a slow link
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut_on: _CutOn | None = None
        self._refuse = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, target_port: int) -> AsyncIterator[TcpProxy]:
        """A started proxy, stopped on exit (for fixtures)."""
        proxy = cls(target_port)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """The server goes away: no more connections, and the open ones are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for link in list(self._links):
            link.client.close()
            link.server.close()
        await server.wait_closed()

    def cut(self) -> int:
        """Cut every open connection now (the proxy keeps listening); how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def refuse(self, connections: int) -> None:
        """Drop the next ``connections`` connections as soon as they come (a server that is
        still restarting)."""
        self._refuse = connections

    def stall(self) -> None:
        """Hold every byte in the proxy, both ways, until ``resume``."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut_on(self, pattern: bytes, *, upstream: bool = True, after: int = 0) -> asyncio.Event:
        """Cut the first connection that carries ``pattern`` (towards the server when
        ``upstream``), ``after`` bytes past the pattern's end (negative: inside it). What
        comes before that point is forwarded, nothing after. The event is set once cut."""
        self._cut_on = _CutOn(pattern, upstream, after)
        return self._cut_on.done

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(asyncio.get_running_loop().time())
        if self._refuse > 0:
            self._refuse -= 1
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(link, reader, up_w, upstream=True),
                self._pipe(link, up_r, writer, upstream=False),
            )
        finally:
            self._links.discard(link)

    async def _pipe(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        tail = b""  # the end of what went before, for a pattern split between two reads
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                rule = self._cut_on
                if rule is not None and rule.upstream == upstream:
                    keep = self._keep_before_cut(rule, link, tail, data)
                    if keep is not None:
                        writer.write(data[:keep])
                        with contextlib.suppress(ConnectionError, OSError):
                            await writer.drain()
                        self._cut_on = None
                        link.abort()
                        rule.done.set()
                        return
                    tail = (tail + data)[-len(rule.pattern) :]
                writer.write(data)
                await writer.drain()
        writer.close()

    @staticmethod
    def _keep_before_cut(rule: _CutOn, link: _Link, tail: bytes, data: bytes) -> int | None:
        """How many bytes of ``data`` go through before ``rule`` cuts ``link``; None when it
        does not cut in this chunk."""
        if rule.link is None:
            at = (tail + data).find(rule.pattern)
            if at < 0:
                return None
            rule.link = link
            rule.left = at + len(rule.pattern) + rule.after - len(tail)
        elif rule.link is not link:
            return None
        if rule.left <= len(data):
            return max(rule.left, 0)
        rule.left -= len(data)
        return None
