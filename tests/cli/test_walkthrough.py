"""The README's command-line walkthrough, with the CLI alone against the cluster: the admin
makes a tenant and a key, ``login`` keeps it (0600), a grid is uploaded, a stencil job runs
with ``--wait``, its output comes back, an array runs with ``--wait``, its elements and a
job's log are read, and ``events --job`` of an array that has ended ends at once. The README
must still hold these commands (so the two stay in step)."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import numpy as np

from tests.cli.conftest import Stratus
from tests.conftest import ADMIN_KEY

README = Path(__file__).parents[2] / "README.md"
NO_ENV: dict[str, str | None] = {"STRATUS_URL": None, "STRATUS_API_KEY": None}

STEPS = (
    "stratus admin tenants create physics -q max_running_jobs=20",
    "stratus admin keys create TENANT_ID laptop",
    "stratus login ",
    "stratus datasets put grid.npy plate/grid.npy",
    "stratus submit stencil2d -p iterations=100 -i grid=plate/grid.npy -o grid=plate/out.npy"
    " --wait",
    "stratus datasets get plate/out.npy out.npy",
    "stratus submit montecarlo_pi --array 20 --index-param seed -p samples=100000 --wait",
    "stratus elements ARRAY_ID",
    "stratus logs -f JOB_ID",
    "stratus events --job ARRAY_ID",
)


def test_the_readme_still_shows_these_steps() -> None:
    text = README.read_text()
    assert all(step in text for step in STEPS), [s for s in STEPS if s not in text]


def test_the_walkthrough_with_the_cli_alone(url: str, tmp_path: Path) -> None:
    home = tmp_path / "config"
    admin = Stratus(url, ADMIN_KEY, home)
    name = f"physics-{uuid.uuid4().hex[:8]}"
    tenant = admin.json("admin", "tenants", "create", name, "-q", "max_running_jobs=20")
    key = admin.json("admin", "keys", "create", tenant["id"], "laptop")["key"]

    me = Stratus(url, "", home, env=NO_ENV)  # from here on, the saved configuration only
    me.ok("login", input=f"{url}\n{key}\n")
    config = home / "stratus" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "stencil2d" in me.ok("kernels").stdout

    grid = np.zeros((256, 256))
    grid[0, :] = 1.0  # a hot edge: the interior warms up
    np.save(tmp_path / "grid.npy", grid)
    put = me.ok("datasets", "put", str(tmp_path / "grid.npy"), "plate/grid.npy")
    assert "plate/grid.npy" in put.stdout
    ran = me.ok(
        "submit", "stencil2d", "-p", "iterations=100", "-i", "grid=plate/grid.npy",
        "-o", "grid=plate/out.npy", "--wait",
    )  # fmt: skip
    assert ran.stdout.startswith("SUCCEEDED ")
    job_id = ran.stdout.split()[1]
    me.ok("datasets", "get", "plate/out.npy", str(tmp_path / "out.npy"))
    out = np.load(tmp_path / "out.npy")
    assert out.shape == grid.shape
    assert (out[0] == 1.0).all()
    assert 0 < out[1, 128] < 1

    sweep = me.json(
        "submit", "montecarlo_pi", "--array", "20", "--index-param", "seed",
        "-p", "samples=100000", "--wait",
    )  # fmt: skip
    assert sweep["state"] == "SUCCEEDED"
    assert sweep["array"]["counts"]["SUCCEEDED"] == 20
    rows = me.ok("elements", sweep["id"]).stdout.splitlines()
    assert len([r for r in rows if "SUCCEEDED" in r]) == 20
    assert all(len(r) <= 80 for r in rows)
    log = me.ok("logs", "-f", job_id).stdout
    assert "SUCCEEDED" in log
    ended = me.ok("events", "--job", sweep["id"])  # ended already: at once, not a hang
    assert ended.stdout == ""
    assert "has ended SUCCEEDED" in ended.stderr
    replayed = me.ok("events", "--job", sweep["id"], "--after", "0", "--json").stdout
    last = json.loads(replayed.splitlines()[-1])
    assert (last["data"]["job_id"], last["data"]["state"]) == (sweep["id"], "SUCCEEDED")
