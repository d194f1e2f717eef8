"""Every Python example of the SDK's README runs as it is, as a user would run it: a
process of its own, configured only by the environment (``STRATUS_URL``,
``STRATUS_API_KEY``, and ``STRATUS_ADMIN_KEY`` for the admin's example)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY

README = Path(__file__).parents[2] / "clients" / "python" / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXAMPLES = BLOCK.findall(README.read_text())


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code: str, url: str, key: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STRATUS_URL": url,
        "STRATUS_API_KEY": key,
        "STRATUS_ADMIN_KEY": ADMIN_KEY,
    }
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert run.stdout.strip(), "every example prints what it did"
