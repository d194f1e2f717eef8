"""A webhook receiver for the SDK and CLI tests: a real HTTP server on 127.0.0.2 (the
address their clusters allow; 127.0.0.1 stays refused) that records every POST and answers
204."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

HOST = "127.0.0.2"


@dataclass
class Hooks:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, count: int, within_s: float = 60.0) -> list[tuple[dict[str, Any], str]]:
        """The first ``count`` deliveries (body, signature header) once that many came."""
        deadline = time.monotonic() + within_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, self.received
            time.sleep(0.1)
        return [(orjson.loads(b), h.get("Stratus-Signature", "")) for h, b in self.received]

    def states_until(self, *wanted: str, within_s: float = 60.0) -> list[str]:
        """The states delivered, once every one of ``wanted`` is among them. Deliveries are
        sent concurrently and at least once, so the order they arrive in means nothing."""
        deadline = time.monotonic() + within_s
        while True:
            states = [orjson.loads(b)["state"] for _, b in self.received]
            if set(wanted) <= set(states):
                return states
            assert time.monotonic() < deadline, states
            time.sleep(0.1)


@contextmanager
def receiver() -> Iterator[Hooks]:
    holder: list[Hooks] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            holder[0].received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    holder.append(Hooks(f"http://{HOST}:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
