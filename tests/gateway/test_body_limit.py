"""Request bodies are bounded while they stream, at the edge: a real uvicorn gateway and a raw
socket client that sends chunked or trickled bodies the way an attacker would."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.gateway.settings import GatewaySettings
from tests.conftest import ADMIN_KEY
from tests.datamover.harness import free_port
from tests.tiers import disk_tiers

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024
HUGE = 200 * 1024 * 1024  # far over every limit: never sent whole when the gateway is right


@dataclass
class Gateway:
    port: int
    settings: GatewaySettings
    log: Path
    key: str  # a tenant key with every scope

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def gateway(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The gateway as a uvicorn process, with short body timeouts so that a trickle is cut off
    within a test's patience."""
    port = free_port()
    root = tmp_path_factory.mktemp("body-limit")
    settings = GatewaySettings(body_timeout_s=2.0, body_idle_timeout_s=1.0)
    env = {
        **os.environ,
        **test_env,
        "STRATUS_PORT": str(port),
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_BODY_TIMEOUT_S": str(settings.body_timeout_s),
        "STRATUS_BODY_IDLE_TIMEOUT_S": str(settings.body_idle_timeout_s),
        **disk_tiers(root),
    }
    log = root / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, log)
            yield Gateway(port, settings, log, tenant_key(url))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway was not ready within 60 s"
        time.sleep(0.2)


def tenant_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"name": f"bodies-{uuid.uuid4().hex[:8]}", "quotas": {"requests_per_second": 1e4}}
    t = httpx.post(f"{url}/v1/tenants", json=body, headers=admin, timeout=10)
    assert t.status_code == 201, t.text
    k = httpx.post(f"{url}/v1/tenants/{t.json()['id']}/keys", json={"name": "k"}, headers=admin)
    assert k.status_code == 201, k.text
    key: str = k.json()["key"]
    return key


def start(gw: Gateway, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """A connection with the request's head sent and its body not yet begun."""
    sock = socket.create_connection(("127.0.0.1", gw.port))
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answered(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def read_status(sock: socket.socket, timeout_s: float) -> tuple[int, bytes]:
    """The status code of the answer and the head and body as far as they were read."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the connection closed without an answer: {data!r}"
        data += piece
    return int(data.split(b" ", 2)[1]), data


def send_until_answered(sock: socket.socket, total: int) -> tuple[int, bool]:
    """Send up to ``total`` bytes of chunked body, stopping at the first byte of an answer or
    when the gateway stops taking them: (bytes sent, whether the gateway cut the sending)."""
    return _send(sock, total, stop_when_answered=True)


def send_until_cut(sock: socket.socket, total: int) -> tuple[int, bool]:
    """The same, after the answer was read: only the gateway's closing stops it."""
    return _send(sock, total, stop_when_answered=False)


def _send(sock: socket.socket, total: int, *, stop_when_answered: bool) -> tuple[int, bool]:
    sent = 0
    piece = chunk(b"x" * CHUNK)
    while sent < total:
        if stop_when_answered and answered(sock):
            return sent, False
        try:
            sock.sendall(piece)
        except OSError:  # closed by the gateway: what it had not read, it never will
            return sent, True
        sent += CHUNK
    return sent, False


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(gateway: Gateway) -> None:
    limit = gateway.settings.max_body_bytes
    head = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    with start(gateway, "POST", "/v1/jobs", head) as sock:  # no key: refused on size first
        sent, _ = send_until_answered(sock, HUGE)
        status, response = read_status(sock, timeout_s=30)
    assert status == 413, response
    assert b"connection: close" in response.lower()
    # The limit, and what the sockets' buffers took before the answer was seen (loopback
    # buffers grow to several MiB): far from the whole body.
    assert limit < sent < HUGE // 10


def test_a_declared_length_over_the_limit_is_refused_before_the_body(gateway: Gateway) -> None:
    head = {"Content-Length": str(gateway.settings.max_body_bytes + 1)}
    with start(gateway, "POST", "/v1/jobs", head) as sock:
        status, response = read_status(sock, timeout_s=30)
    assert status == 413, response


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(gateway: Gateway) -> None:
    head = {"Transfer-Encoding": "chunked"}
    with start(gateway, "PUT", "/v1/datasets/big.bin", head) as sock:
        sent, cut = send_until_answered(sock, HUGE)
        status, response = read_status(sock, timeout_s=30)
        assert status == 401, response
        if not cut:  # the answer came first; the connection is closed behind it
            more, cut = send_until_cut(sock, HUGE - sent)
            sent += more
    assert cut, "the gateway read the whole 200 MB body of a request it had refused"
    assert sent < HUGE


def test_an_upload_with_a_key_is_bounded_by_quota_not_by_the_body_limit(
    gateway: Gateway,
) -> None:
    size = gateway.settings.max_body_bytes + CHUNK
    name = f"bodies/{uuid.uuid4().hex[:8]}.bin"
    headers = {"Authorization": f"Bearer {gateway.key}"}
    r = httpx.put(f"{gateway.url}/v1/datasets/{name}", content=b"x" * size, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["size"] == size


def test_a_trickled_body_is_cut_off_by_the_body_timeout(gateway: Gateway) -> None:
    """Each piece arrives well within the idle timeout, the whole body never in time."""
    s = gateway.settings
    head = {"Transfer-Encoding": "chunked", "Authorization": f"Bearer {gateway.key}"}
    with start(gateway, "POST", "/v1/jobs", head) as sock:
        begun = time.monotonic()
        while not answered(sock) and time.monotonic() - begun < s.body_timeout_s * 10:
            try:
                sock.sendall(chunk(b" "))
            except OSError:  # closed between the check and the send
                break
            time.sleep(s.body_idle_timeout_s / 4)
        status, response = read_status(sock, timeout_s=1)
        while sock.recv(65536):  # the rest of the answer, then the gateway closes
            pass
    assert status == 408, response
    assert b"connection: close" in response.lower()


def test_a_stalled_upload_is_cut_off_by_the_idle_timeout(gateway: Gateway) -> None:
    s = gateway.settings
    name = f"bodies/{uuid.uuid4().hex[:8]}.bin"
    head = {"Content-Length": "1000", "Authorization": f"Bearer {gateway.key}"}
    with start(gateway, "PUT", f"/v1/datasets/{name}", head) as sock:
        sock.sendall(b"x" * 10)
        status, response = read_status(sock, timeout_s=s.body_idle_timeout_s + 30)
    assert status == 408, response
    headers = {"Authorization": f"Bearer {gateway.key}"}
    assert httpx.get(f"{gateway.url}/v1/datasets/{name}", headers=headers).status_code == 404


def test_many_slow_bodies_are_all_cut_off_and_the_gateway_still_answers(
    gateway: Gateway,
) -> None:
    s = gateway.settings
    key = {"Authorization": f"Bearer {gateway.key}"}
    socks = []
    for i in range(40):
        auth = key if i % 2 else {}
        path = "/v1/jobs" if i % 4 < 2 else f"/v1/datasets/slow/{i}"
        method = "POST" if path == "/v1/jobs" else "PUT"
        sock = start(gateway, method, path, {"Content-Length": "100", **auth})
        sock.sendall(b"{")
        socks.append(sock)
    try:
        statuses = {read_status(sock, s.body_timeout_s + 30)[0] for sock in socks}
    finally:
        for sock in socks:
            sock.close()
    assert statuses <= {401, 408}, statuses
    assert 408 in statuses
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_an_upload_needs_a_declared_length(gateway: Gateway) -> None:
    """No Content-Length and no chunked body: 411, not an empty dataset."""
    name = f"bodies/{uuid.uuid4().hex[:8]}.bin"
    with start(
        gateway, "PUT", f"/v1/datasets/{name}", {"Authorization": f"Bearer {gateway.key}"}
    ) as sock:
        status, response = read_status(sock, timeout_s=30)
    assert status == 411, response
    headers = {"Authorization": f"Bearer {gateway.key}"}
    assert httpx.get(f"{gateway.url}/v1/datasets/{name}", headers=headers).status_code == 404
    empty = httpx.put(
        f"{gateway.url}/v1/datasets/{name}", headers={**headers, "Content-Length": "0"}
    )
    assert empty.status_code == 201, empty.text
    assert empty.json()["size"] == 0


def test_a_client_that_goes_away_is_logged_in_one_line(gateway: Gateway) -> None:
    name = f"bodies/gone-{uuid.uuid4().hex[:8]}.bin"
    head = {"Content-Length": "100000", "Authorization": f"Bearer {gateway.key}"}
    with start(gateway, "PUT", f"/v1/datasets/{name}", head) as sock:
        sock.sendall(b"x" * 1000)
        time.sleep(0.2)  # let the upload begin before the client leaves
    deadline = time.monotonic() + 30
    while name not in gateway.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in gateway.log.read_text().splitlines() if name in line]
    assert len(lines) == 1, lines
    assert "client_disconnected" in lines[0]
    assert "Traceback" not in gateway.log.read_text()
