"""A real HTTP receiver on loopback for the webhook tests: it records every request and
answers each with the next of a script of answers (then 200)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class Receiver:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def next_answer(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if self.script else Answer()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # deliveries arrive many at once (the default backlog is 5)


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A receiver on ``127.0.0.1`` (a port of its own) for the duration of the block."""
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            got = Received(self.command, self.path, dict(self.headers), self.rfile.read(size))
            me = holder[0]
            with me.lock:
                me.received.append(got)
            answer = me.next_answer()
            if answer.delay_s:
                time.sleep(answer.delay_s)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = _record
        do_GET = _record

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
