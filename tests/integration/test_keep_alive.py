"""Idle keep-alive connections outlive the clients' own idle expiry (``http_keep_alive_s``).

With uvicorn's default of 5 s, equal to httpx's keep-alive expiry, a client could reuse an
idle connection at the moment the server closed it and get a ``ReadError``; now the server
keeps it for 75 s, so the client is the one that closes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.datamover.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
REQUEST = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "STRATUS_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.keep_alive_app", str(port)], cwd=ROOT, env=env
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def exchange(sock: socket.socket) -> bytes:
    sock.sendall(REQUEST)
    data = b""
    while b'{"ok":true}' not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data  # closed by the server
        data += chunk
    return data


def test_an_idle_connection_is_still_served_after_uvicorns_default_keep_alive(
    server: int,
) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        assert exchange(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)  # past uvicorn's default (5 s) and httpx's expiry
        assert exchange(sock).startswith(b"HTTP/1.1 200")
