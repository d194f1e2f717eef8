"""The console's browser tests: a cluster of their own and Debian's chromium driven by
Playwright (``scripts/ensure-tools.sh`` installs chromium when it is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tests.e2e.conftest import own_cluster
from tests.tiers import disk_tiers
from tools.cluster import LocalCluster
from tools.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]
# Each page's screenshot goes here: a folder of the run's unless STRATUS_CONSOLE_SCREENSHOTS
# names one (``STRATUS_CONSOLE_SCREENSHOTS=docs/img`` refreshes the README's).
SCREENSHOTS = Path(
    os.environ.get("STRATUS_CONSOLE_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / f"stratus-console-{os.getpid()}"
)


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-tools.sh"), "chromium"], check=True)
        found = shutil.which("chromium")
    assert found, "chromium is not installed and scripts/ensure-tools.sh could not install it"
    return found


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    """The OTLP receiver the console's cluster exports its traces to."""
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="package")
def console_cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[LocalCluster]:
    """A cluster with tracing on (exported to ``otlp``), one worker of two slots."""
    tiers = Path(tmp_path_factory.mktemp("console-tiers"))
    with own_cluster(
        "console",
        test_env,
        tmp_path_factory,
        env={
            **disk_tiers(tiers),
            "STRATUS_EVENTS_KEEP_ALIVE_S": "1",
            "STRATUS_OTEL__ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # spans exported within 0.1 s
        },
        workers=1,
        timeout=240,  # a worker compiles its kernels on a cold numba cache
        worker_env={"STRATUS_CONCURRENCY": "2", "STRATUS_HEARTBEAT_INTERVAL_S": "0.5"},
    ) as c:
        yield c


@pytest.fixture(scope="module")
async def api(console_cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console_cluster.url("gateway"), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            await b.close()
