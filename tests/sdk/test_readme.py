"""Every Python example of the SDK's README, and of the main README's "Python SDK" section,
runs as it is, as a user would run it: a process of its own, configured only by the
environment (``STRATUS_URL``, ``STRATUS_API_KEY``, and ``STRATUS_ADMIN_KEY`` for the admin's
example)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY

ROOT = Path(__file__).parents[2]
SDK_README = ROOT / "clients" / "python" / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SDK_EXAMPLES = BLOCK.findall(SDK_README.read_text())
# the main README's "Python SDK" section, up to the next section
SECTION = re.compile(r"^## Python SDK\n(.*?)(?=^## )", re.DOTALL | re.MULTILINE)
EXAMPLES = SDK_EXAMPLES + BLOCK.findall(SECTION.findall((ROOT / "README.md").read_text())[0])


def test_the_readmes_have_examples() -> None:
    assert len(SDK_EXAMPLES) >= 8
    assert len(EXAMPLES) > len(SDK_EXAMPLES)


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
