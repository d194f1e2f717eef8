"""Fixtures of the worker tests: ``.npy`` files in a temporary folder, and a folder that
installs ``tests/worker/fault_kernels.py`` as a ``stratus.kernels`` entry-point plugin."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from services.worker.runner import KernelRunner, PoolConfig

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = """\
[stratus.kernels]
spin = tests.worker.fault_kernels:SPIN
segfault = tests.worker.fault_kernels:SEGFAULT
hog = tests.worker.fault_kernels:HOG
"""

Save = Callable[[str, np.ndarray[Any, Any]], str]


@pytest.fixture
def save(tmp_path: Path) -> Save:
    """Write an array as ``<tmp>/in/<name>.npy``; return its path."""

    def _save(name: str, arr: np.ndarray[Any, Any]) -> str:
        path = tmp_path / "in" / f"{name}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, arr)
        return str(path)

    return _save


@pytest.fixture
def out(tmp_path: Path) -> Callable[[str], str]:
    return lambda name: str(tmp_path / "out" / f"{name}.npy")


def install_plugin(folder: Path) -> Path:
    """A distribution in ``folder`` whose entry points name the fault kernels."""
    dist = folder / "stratus_test_kernels-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stratus-test-kernels\nVersion: 0.0.0\n"
    )
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return folder


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH under which the fault kernels are an installed plugin."""
    folder = install_plugin(tmp_path_factory.mktemp("plugin"))
    return os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])


# CPU seconds a pool process has spent on its current job once ``kernel_started`` returns
STARTED_CPU_S = 0.05


async def kernel_started(runner: KernelRunner) -> None:
    """Until a pool process has spent more than ``STARTED_CPU_S`` on a job (``spin`` does;
    an idle one waits for its next request)."""
    while not any(p.cpu_seconds() - p.cpu_total > STARTED_CPU_S for p in runner._procs):
        await asyncio.sleep(0.02)


CACHE = Path(os.path.expanduser("~/.cache/stratus/numba"))
MEMORY_LIMIT_MB = 2000  # what a job may allocate in these pool processes


@pytest_asyncio.fixture(scope="session")
async def runner(plugin_path: str) -> AsyncIterator[KernelRunner]:
    """Two warm pool processes that also know the fault kernels, memory capped."""
    config = PoolConfig(
        processes=2,
        cache_dir=CACHE,
        threads=1,
        memory_limit_bytes=MEMORY_LIMIT_MB * 2**20,
        extra_env={"PYTHONPATH": plugin_path},
    )
    pool = KernelRunner(config)
    await pool.start()
    yield pool
    await pool.close()
