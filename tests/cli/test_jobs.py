"""``stratus kernels|submit|jobs|show|elements|wait|cancel|watch`` against the cluster: their
output for people and for scripts (``--json``), and their exit codes (0 done, 1 a job that
did not succeed, 2 a usage error, 3 the API's error)."""

from __future__ import annotations

import json
import uuid

import pytest
from stratus_client import Client

from tests.cli.conftest import MC, Stratus, new_key, one_line


def test_kernels(stratus: Stratus) -> None:
    table = stratus.ok("kernels").stdout
    assert "montecarlo_pi" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    names = {k["name"] for k in stratus.json("kernels")}
    assert {"saxpy", "matmul", "stencil2d", "nbody", "histogram", "montecarlo_pi"} <= names


def test_submit_and_wait(stratus: Stratus) -> None:
    """Values of --param are JSON when they parse; --label values stay text."""
    job = stratus.json(
        "submit", "montecarlo_pi", *MC, "-p", "seed=3", "--label", "run=7", "--priority", "8"
    )
    assert job["params"] == {"samples": 1000, "seed": 3}
    assert job["labels"] == {"run": "7"}
    assert job["priority"] == 8
    assert job["state"] in {"PENDING", "QUEUED"}
    waited = stratus.ok("wait", job["id"])
    assert waited.stdout.splitlines()[0] == f"SUCCEEDED {job['id']}"
    assert "estimate" in waited.stdout
    shown = stratus.json("show", job["id"])
    assert shown["state"] == "SUCCEEDED"
    assert 3.0 < shown["result"]["estimate"] < 3.3
    human = stratus.ok("show", job["id"]).stdout
    assert job["id"] in human
    assert '"seed": 3' in human
    assert all(len(line) <= 80 for line in human.splitlines())

    done = stratus.ok("submit", "montecarlo_pi", *MC, "--wait")
    assert done.stdout.startswith("SUCCEEDED ")
    plain = stratus.ok("submit", "montecarlo_pi", *MC).stdout
    assert plain.startswith("submitted job ")


def test_a_job_that_does_not_succeed_exits_1(stratus: Stratus) -> None:
    result = stratus(
        "submit", "montecarlo_pi", "-p", "samples=1000000000000", "--timeout", "1",
        "--retries", "0", "--wait", "--json",
    )  # fmt: skip
    assert result.exit_code == 1, (result.stdout, result.stderr)
    job = json.loads(result.stdout)
    assert job["state"] == "TIMED_OUT"
    again = stratus("wait", job["id"])
    assert again.exit_code == 1
    assert again.stdout.startswith(f"TIMED_OUT {job['id']}")


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],
        ["submit", "montecarlo_pi", "--param", "samples"],
        ["submit", "montecarlo_pi", "--index-param", "seed"],
        ["submit", "montecarlo_pi", "--device", "tpu"],
        ["jobs", "--state", "DONE"],
        ["jobs", "--limit", "0"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(stratus: Stratus, args: list[str]) -> None:
    result = stratus(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert stratus.json("jobs") == []  # nothing was submitted


def test_api_errors_exit_3_with_one_line(stratus: Stratus) -> None:
    missing = stratus("show", str(uuid.uuid4()))
    assert missing.exit_code == 3
    assert one_line(missing.stderr).startswith("stratus: 404 ")
    unknown = stratus("submit", "no_such_kernel")
    assert unknown.exit_code == 3
    assert "no_such_kernel" in one_line(unknown.stderr)
    bad = stratus("submit", "montecarlo_pi", "--param", "samples=0")
    assert bad.exit_code == 3
    assert "samples" in one_line(bad.stderr)
    assert bad.stdout == ""
    wrong_key = stratus("jobs", STRATUS_API_KEY="sk_" + "x" * 40)
    assert wrong_key.exit_code == 3
    assert one_line(wrong_key.stderr).startswith("stratus: 401 ")
    assert stratus.json("jobs") == []


def test_jobs_lists_with_filters_and_pages(stratus: Stratus) -> None:
    run = uuid.uuid4().hex[:8]
    ids = [
        stratus.json("submit", "montecarlo_pi", *MC, "--label", f"run={run}")["id"]
        for _ in range(3)
    ]
    stratus.json("submit", "montecarlo_pi", *MC)  # no label
    assert [j["id"] for j in stratus.json("jobs", "--label", f"run={run}")] == ids[::-1]
    assert len(stratus.json("jobs", "--limit", "2")) == 2
    assert len(stratus.json("jobs", "--limit", "1", "--all")) == 4  # --all: every page
    for job_id in ids:
        stratus.ok("wait", job_id)
    filters = ("--state", "SUCCEEDED", "--kernel", "montecarlo_pi", "-l", f"run={run}")
    done = stratus.json("jobs", *filters)
    assert sorted(j["id"] for j in done) == sorted(ids)
    assert stratus.json("jobs", "--state", "FAILED") == []
    table = stratus.ok("jobs", "--label", f"run={run}").stdout
    assert all(job_id in table for job_id in ids)
    assert all(len(line) <= 80 for line in table.splitlines())


def test_an_array_its_elements_and_counts(stratus: Stratus) -> None:
    array = stratus.json(
        "submit", "montecarlo_pi", *MC, "--array", "6", "--index-param", "seed",
        "--max-concurrent", "2", "--wait",
    )  # fmt: skip
    assert array["state"] == "SUCCEEDED"
    assert array["array"]["size"] == 6
    assert array["array"]["counts"]["SUCCEEDED"] == 6
    elements = stratus.json("elements", array["id"])
    assert [e["array_index"] for e in elements] == list(range(6))
    assert [e["params"]["seed"] for e in elements] == list(range(6))
    assert len(stratus.json("elements", array["id"], "--state", "SUCCEEDED", "--limit", "2")) == 2
    assert stratus.json("show", f"{array['id']}:4")["array_index"] == 4
    shown = stratus.ok("show", array["id"]).stdout
    assert "SUCCEEDED 6" in shown
    assert "6/6" in shown
    table = stratus.ok("elements", array["id"]).stdout
    assert "estimate" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    listed = stratus.ok("jobs").stdout
    assert array["id"] in listed
    assert "6/6" in listed
    waited = stratus.ok("wait", array["id"])
    assert "elements: SUCCEEDED 6" in waited.stdout


def test_cancel_and_watch(url: str, admin: Client, stratus: Stratus) -> None:
    """A tenant with no running slot: its jobs wait, `watch` shows them, `cancel` ends them
    (a second cancel is the API's 409), `wait` on a cancelled job exits 1."""
    held = stratus.as_key(new_key(admin, "cli-held", max_running_jobs=0))
    one = held.json("submit", "montecarlo_pi", *MC)["id"]
    sweep = held.json("submit", "montecarlo_pi", *MC, "--array", "3", "--index-param", "seed")
    assert {j["id"] for j in held.json("watch")} == {one, sweep["id"]}
    table = held.ok("watch", "--once").stdout
    assert one in table
    assert sweep["id"] in table
    assert "2 not ended" in table
    assert held.ok("cancel", one).stdout.startswith(f"cancelling {one}")
    assert held.json("cancel", sweep["id"])["id"] == sweep["id"]
    assert held("wait", one).exit_code == 1
    waited = held("wait", sweep["id"], "--json")
    assert waited.exit_code == 1
    assert json.loads(waited.stdout)["state"] == "CANCELLED"
    again = held("cancel", one)
    assert again.exit_code == 3
    assert one_line(again.stderr).startswith("stratus: 409 ")
    assert held.json("watch") == []


def test_watch_redraws_until_ctrl_c(
    admin: Client, stratus: Stratus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live table looks again after each wait for a change (at most the interval);
    Ctrl-C ends it with 0."""
    held = stratus.as_key(new_key(admin, "cli-watch", max_running_jobs=0))
    job = held.json("submit", "montecarlo_pi", *MC)["id"]
    looks: list[float] = []

    def wait(self: object, seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("stratus_client.cli.watch.Changes.wait", wait)
    result = held.ok("watch", "--interval", "0.5")
    assert looks == [0.5, 0.5, 0.5]
    assert job in result.stdout
    held.ok("cancel", job)
