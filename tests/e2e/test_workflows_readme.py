"""The README's curl walkthrough of a three-step workflow (section "Dependencies and
workflows") runs as it is, as a user would run it: its one bash block, unchanged, in a shell
of its own with ``GW`` and ``KEY`` set (as "A first job" sets them) and a directory of its own
where ``.venv`` is the checkout's. What it prints is checked: the workflow SUCCEEDED with its
three steps, the reduction's counts, and the provenance it shows (the receipt's checksum of
the input is the dataset's, whose ``produced_by`` is the solve step's job)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import new_tenant

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
SECTION = re.compile(r"^### Dependencies and workflows\n(.*?)(?=^##)", re.DOTALL | re.MULTILINE)
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def walkthrough() -> str:
    section = SECTION.findall((ROOT / "README.md").read_text())
    assert len(section) == 1
    blocks = BLOCK.findall(section[0])
    assert len(blocks) == 1, "the section has one bash walkthrough"
    return str(blocks[0])


def documents(text: str) -> list[Any]:
    """The JSON documents ``jq`` printed one after another."""
    decoder = json.JSONDecoder()
    docs, at = [], 0
    while (at := _skip_space(text, at)) < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return docs


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def test_the_walkthrough_is_three_steps_through_dataset_names() -> None:
    block = walkthrough()
    assert block.count('"kernel"') == 3
    assert "plate/initial.npy" in block
    assert "plate/solved.npy" in block
    assert block.count('"depends_on"') == 2


async def test_the_readme_workflow_walkthrough_runs(api: httpx.AsyncClient, tmp_path: Path) -> None:
    _, headers = await new_tenant(api, "readme-workflow")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {
        **os.environ,
        "GW": str(api.base_url).rstrip("/"),
        "KEY": headers["Authorization"].removeprefix("Bearer "),
    }
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", walkthrough()],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    workflow, reduce, dataset = documents(run.stdout)
    assert workflow["state"] == "SUCCEEDED", workflow
    assert workflow["counts"]["SUCCEEDED"] == sum(workflow["counts"].values()) == 3
    assert set(workflow["steps"]) == {"generate", "solve", "reduce"}
    # 2.5 x + 1 for x = 0..7: 1, 3.5 | 6, 8.5 | 11, 13.5 | 16, 18.5
    assert reduce == {
        "state": "SUCCEEDED",
        "result": {"counts": [2, 2, 2, 2]},
        "inputs": {"data": {"dataset": "plate/solved.npy", "checksum": dataset["checksum"]}},
    }
    assert dataset["produced_by"] == workflow["steps"]["solve"]
