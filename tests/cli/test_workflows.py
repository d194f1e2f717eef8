"""``stratus workflow submit|show|ls|cancel``, ``stratus submit --depends-on`` and the
receipt in ``stratus show`` against the cluster: output for people (80 columns) and scripts
(``--json``), exit codes (0 done, 1 a workflow that did not succeed, 2 a usage error, 3 the
API's error)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
from stratus_client import Client

from tests.cli.conftest import MC, Stratus, new_key, one_line

TWO_STEPS = """\
name: two-steps
steps:
  first:
    kernel: montecarlo_pi
    params: {samples: 1000, seed: 1}
  second:
    kernel: montecarlo_pi
    params: {samples: 1000, seed: 2}
    depends_on:
      - {step: first, condition: afterok}
"""

CYCLE = """\
name: cycle
steps:
  a:
    kernel: montecarlo_pi
    params: {samples: 1000}
    depends_on: [{step: b, condition: afterok}]
  b:
    kernel: montecarlo_pi
    params: {samples: 1000}
    depends_on: [{step: a, condition: afterok}]
"""


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _narrow(text: str) -> None:
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_a_two_step_workflow_from_yaml(stratus: Stratus, tmp_path: Path) -> None:
    path = _file(tmp_path, "two.yaml", TWO_STEPS)
    waited = stratus.ok("workflow", "submit", path, "--wait")
    state, workflow_id = waited.stdout.splitlines()[0].split()
    assert state == "SUCCEEDED"
    assert "SUCCEEDED 2" in waited.stdout
    shown = stratus.json("workflow", "show", workflow_id)
    assert (shown["name"], shown["state"]) == ("two-steps", "SUCCEEDED")
    first = stratus.json("show", shown["steps"]["first"])
    second = stratus.json("show", shown["steps"]["second"])
    assert first["workflow_id"] == second["workflow_id"] == workflow_id
    assert datetime.fromisoformat(second["started_at"]) >= datetime.fromisoformat(
        first["finished_at"]
    )
    human = stratus.ok("workflow", "show", workflow_id).stdout
    assert "two-steps" in human
    assert shown["steps"]["second"] in human
    _narrow(human)

    plain = stratus.ok("workflow", "submit", path).stdout
    assert plain.startswith("submitted workflow ")
    assert "first" in plain
    as_json = stratus.json("workflow", "submit", path, "--wait")
    assert as_json["state"] == "SUCCEEDED"
    listed = stratus.json("workflow", "ls")
    assert len(listed) == 3
    assert listed[0]["id"] == as_json["id"]  # newest first
    table = stratus.ok("workflow", "ls").stdout
    assert workflow_id in table
    _narrow(table)


def test_json_is_a_workflow_file_too(stratus: Stratus, tmp_path: Path) -> None:
    steps = {"only": {"kernel": "montecarlo_pi", "params": {"samples": 1000}}}
    body = {"name": "as-json", "steps": steps}
    done = stratus.json("workflow", "submit", _file(tmp_path, "w.json", json.dumps(body)), "--wait")
    assert (done["name"], done["state"]) == ("as-json", "SUCCEEDED")


def test_a_cycle_is_exit_3_with_the_problem_on_one_line(stratus: Stratus, tmp_path: Path) -> None:
    result = stratus("workflow", "submit", _file(tmp_path, "cycle.yaml", CYCLE))
    assert result.exit_code == 3
    line = one_line(result.stderr)
    assert line.startswith("stratus: 422 ")
    assert "cycle" in line.lower()
    assert stratus.json("workflow", "ls") == []


def test_a_bad_file_is_a_usage_error(stratus: Stratus, tmp_path: Path) -> None:
    for name, text in (("list.yaml", "- 1\n- 2\n"), ("bad.yaml", "steps: [unclosed\n")):
        result = stratus("workflow", "submit", _file(tmp_path, name, text))
        assert result.exit_code == 2, result.stdout
        assert one_line(result.stderr).startswith("stratus: ")
    extra = stratus("workflow", "submit", _file(tmp_path, "x.yaml", TWO_STEPS + "other: 1\n"))
    assert extra.exit_code == 2
    assert "other" in one_line(extra.stderr)
    missing = stratus("workflow", "submit", str(tmp_path / "nothing.yaml"))
    assert missing.exit_code == 2


def test_a_workflow_that_does_not_succeed_exits_1(stratus: Stratus, tmp_path: Path) -> None:
    """The first step times out: the second can never start (CANCELLED), the workflow
    FAILED, and ``--wait`` exits 1."""
    text = TWO_STEPS.replace(
        "params: {samples: 1000, seed: 1}",
        "params: {samples: 1000000000000}\n    timeout_s: 1\n    max_retries: 0",
    )
    result = stratus("workflow", "submit", _file(tmp_path, "slow.yaml", text), "--wait", "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    workflow = json.loads(result.stdout)
    assert workflow["state"] == "FAILED"
    second = stratus.json("show", workflow["steps"]["second"])
    assert (second["state"], second["state_reason"]) == (
        "CANCELLED",
        "dependency_never_satisfied",
    )


def test_cancel_and_a_second_cancel(stratus: Stratus, admin: Client, tmp_path: Path) -> None:
    """A tenant with no running slot: the steps wait until the workflow is cancelled; a
    second cancel is the API's 409 (exit 3)."""
    held = stratus.as_key(new_key(admin, "wf-held", max_running_jobs=0))
    submitted = held.json("workflow", "submit", _file(tmp_path, "two.yaml", TWO_STEPS))
    cancelled = held.ok("workflow", "cancel", submitted["id"]).stdout
    assert cancelled.startswith(f"cancelling workflow {submitted['id']}")
    shown = held.json("workflow", "show", submitted["id"])
    assert shown["state"] == "CANCELLED"
    again = held("workflow", "cancel", submitted["id"])
    assert again.exit_code == 3
    assert one_line(again.stderr).startswith("stratus: 409 ")


def test_depends_on_and_the_receipt(stratus: Stratus) -> None:
    """--depends-on ID runs after ID succeeded (afterok unless a condition is given); a
    SUCCEEDED job's ``show`` prints its receipt."""
    first = stratus.json("submit", "montecarlo_pi", *MC)
    after = stratus.json("submit", "montecarlo_pi", *MC, "--depends-on", first["id"])
    assert after["depends_on"] == [{"job": first["id"], "condition": "afterok"}]
    anyway = stratus.json("submit", "montecarlo_pi", *MC, "--depends-on", f"{first['id']}:afterany")
    assert anyway["depends_on"] == [{"job": first["id"], "condition": "afterany"}]
    waited = stratus.ok("wait", after["id"])
    assert waited.stdout.startswith(f"SUCCEEDED {after['id']}")
    stratus.ok("wait", anyway["id"])
    done, before = stratus.json("show", after["id"]), stratus.json("show", first["id"])
    assert datetime.fromisoformat(done["started_at"]) >= datetime.fromisoformat(
        before["finished_at"]
    )
    assert done["receipt"]["kernel"] == "montecarlo_pi"
    human = stratus.ok("show", after["id"]).stdout
    _narrow(human)
    receipt = [line for line in human.splitlines() if line.startswith("receipt")]
    assert len(receipt) == 1
    assert "montecarlo_pi" in receipt[0]
    assert f"{first['id']} (afterok)" in human
    assert "software" in human
    assert done["worker"] in human

    unknown = stratus("submit", "montecarlo_pi", *MC, "--depends-on", "no-such-job")
    assert unknown.exit_code == 3
    assert one_line(unknown.stderr).startswith("stratus: 422 ")


README = Path(__file__).parents[2] / "README.md"


def test_the_readme_three_step_workflow(stratus: Stratus, tmp_path: Path) -> None:
    """The main README's walkthrough: its YAML, as it is there, runs to SUCCEEDED; each step
    ran on its predecessor's output, and ``show`` prints a step's receipt."""
    text = README.read_text()
    plate = text.split("cat > plate.yaml <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    np.save(tmp_path / "x.npy", np.arange(8.0))
    np.save(tmp_path / "y.npy", np.ones(8))
    stratus.ok("datasets", "put", str(tmp_path / "x.npy"), "plate/x.npy")
    stratus.ok("datasets", "put", str(tmp_path / "y.npy"), "plate/y.npy")
    result = stratus("workflow", "submit", _file(tmp_path, "plate.yaml", plate), "--wait")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    state, workflow_id = result.stdout.splitlines()[0].split()
    assert state == "SUCCEEDED"
    workflow = stratus.json("workflow", "show", workflow_id)
    assert workflow["name"] == "plate-study"
    assert workflow["counts"]["SUCCEEDED"] == 3
    stats = stratus.json("show", workflow["steps"]["stats"])
    # y = 0.5 x + (2 x + 1) = [1, 3.5, 6, 8.5, 11, 13.5, 16, 18.5] in 4 bins of [0, 24]
    assert stats["result"]["counts"] == [2, 3, 2, 1]
    init = stratus.json("show", workflow["steps"]["init"])
    heat = stratus.json("show", workflow["steps"]["heat"])
    listed = stratus.json("datasets", "ls")
    x_sum = next(d["checksum"] for d in listed if d["name"] == "plate/x.npy")
    for step in (init, heat):
        receipt = step["receipt"]
        assert (receipt["kernel"], receipt["worker"]) == ("saxpy", step["worker"])
        assert receipt["inputs"]["x"] == {"dataset": "plate/x.npy", "checksum": x_sum}
        assert receipt["outputs"]["y"]["dataset"] == "plate/y.npy"
    human = stratus.ok("show", heat["id"]).stdout
    _narrow(human)
    (line,) = [line for line in human.splitlines() if "input x" in line]
    assert line.split()[-2:] == ["plate/x.npy", x_sum]
    assert "output y" in human
