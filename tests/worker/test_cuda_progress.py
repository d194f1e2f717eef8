"""The iterating CUDA kernels (stencil2d, nbody) report their progress between launches, once
a block's launches are done, under the numba CUDA simulator: the cases run in one subprocess
(the simulator must be enabled before numba is imported), one test per case."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.worker.conftest import REPO
from tests.worker.cuda_progress_cases import CASES


@pytest.fixture(scope="module")
def results() -> dict[str, list[object]]:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.worker.cuda_progress_cases"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, list[object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_progress_is_reported_between_launches(name: str, results: dict[str, list[object]]) -> None:
    ok, detail = results[name]
    assert ok is True, detail
