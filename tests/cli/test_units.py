"""The command line's pure parts, without a cluster: KEY=VALUE options, the configuration
file, problems as one line, tables within 80 columns, what a progress bar shows, an event as a
line."""

from __future__ import annotations

import io
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from stratus_client import ApiError, Event, Job, __version__
from stratus_client.cli.app import app
from stratus_client.cli.config import read_file, settings, write_file
from stratus_client.cli.history import ends, event_json, event_line
from stratus_client.cli.options import pairs
from stratus_client.cli.output import problem_line, size, table
from stratus_client.cli.progress import job_view
from typer.testing import CliRunner


def test_values_are_json_when_they_parse() -> None:
    given = ["n=10", "x=0.5", "ok=true", "xs=[1, 2]", "none=null", "s=abc", "v=1.2.3", "e=a=b"]
    assert pairs(given, "--param", as_json=True) == {
        "n": 10,
        "x": 0.5,
        "ok": True,
        "xs": [1, 2],
        "none": None,
        "s": "abc",
        "v": "1.2.3",
        "e": "a=b",
    }
    assert pairs(["run=7", "empty="], "--label") == {"run": "7", "empty": ""}
    assert pairs(None, "--label") == {}
    for bad in (["samples"], ["=1"]):
        with pytest.raises(typer.BadParameter):
            pairs(bad, "--param")


def test_the_config_file_is_its_owners_only(tmp_path: Path) -> None:
    path = tmp_path / "stratus" / "config.toml"
    path.parent.mkdir()
    path.write_text("url = 'http://old'\n")
    path.chmod(0o644)
    odd = 'sk_"quoted"\\back\u00e9'
    write_file("http://host:8000", odd, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = read_file(path)
    assert (stored.url, stored.api_key) == ("http://host:8000", odd)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]  # no temp left
    fresh = tmp_path / "new" / "stratus" / "config.toml"
    write_file("http://a", "b", fresh)
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
    assert read_file(tmp_path / "none.toml").url is None


def test_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    write_file("http://from-file", "sk_file")
    monkeypatch.delenv("STRATUS_URL", raising=False)
    monkeypatch.setenv("STRATUS_API_KEY", "sk_env")
    found = settings()
    assert (found.url, found.api_key) == ("http://from-file", "sk_env")


def test_a_problem_is_one_line() -> None:
    error = ApiError(
        422,
        title="Invalid request",
        detail="params do not match\nthe schema",
        errors=[{"loc": ["body", "params", "samples"], "msg": "must be >= 1"}],
    )
    line = problem_line(error)
    assert "\n" not in line
    assert line == (
        "422 Invalid request: params do not match the schema (body.params.samples: must be >= 1)"
    )
    assert problem_line(ApiError(404, title="Not found", detail="job not found")) == (
        "404 Not found: job not found"
    )


def test_tables_fit_80_columns_and_keep_ids_whole() -> None:
    job_id = "4a309993-c372-48eb-975a-ffffffffffff:12"
    long = "x" * 200
    headers = ("ID", "STATE", "RESULT", "WORKER")
    t = table(headers, [(job_id, "RUNNING", long, long)], cut={"RESULT", "WORKER"}, width=80)
    out = io.StringIO()
    Console(file=out, width=80).print(t)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert job_id in lines[-1]
    assert "…" in lines[-1]
    # what fits is not cut
    short = io.StringIO()
    Console(file=short, width=80).print(table(("A", "B"), [("a", "b")], cut={"B"}, width=80))
    assert "…" not in short.getvalue()


def test_sizes() -> None:
    assert [size(n) for n in (0, 1023, 1024, 3 * 2**20 + 5)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "3.0 MiB",
    ]


def _job(**fields: Any) -> Job:
    base = {"id": "j", "kernel": "k", "device": "cpu", "state": "RUNNING"}
    return Job.model_validate({**base, "created_at": datetime.now(UTC), **fields})


def test_what_a_bar_shows() -> None:
    array = _job(array={"size": 5, "counts": {"SUCCEEDED": 2, "FAILED": 1, "RUNNING": 2}})
    view = job_view(array)
    assert (view["total"], view["completed"], view["done"]) == (5, 3, "3/5")
    assert view["status"] == ["RUNNING", "2 running", "1 not ok"]
    assert job_view(_job(progress=0.45))["done"] == "45%"
    assert job_view(_job(state="QUEUED"))["total"] is None  # pulses until it reports one
    done = job_view(_job(state="SUCCEEDED"))
    assert done["completed"] == done["total"]


def test_an_event_is_one_line_within_80_columns() -> None:
    array = "0c5a1f7e-8d7e-4c43-9e0b-4d1b4a52f2b1"
    element = Event(
        id="1234567",
        type="job.state",
        data={
            "job_id": f"{array}:99999",
            "array_id": array,
            "array_index": 99999,
            "state": "SUCCEEDED",
            "at": "2026-12-06T10:00:02.5+00:00",
        },
    )
    line = event_line(element)
    assert line == f"1234567 10:00:02 job {array}:99999 SUCCEEDED"
    assert len(line) <= 80
    progress = Event(id="8", type="job.progress", data={"job_id": array, "progress": 0.456})
    assert event_line(progress) == f"8 --:--:-- job {array} 46%"
    moved = Event(id="9", type="migration.state", data={"migration_id": "m1", "state": "FAILED"})
    assert event_line(moved).endswith(" migration m1 FAILED")
    assert event_json(moved) == {"id": "9", "event": "migration.state", "data": moved.data}
    assert ends(element, f"{array}:99999")
    assert not ends(element, array)  # an element's end is not its array's
    assert not ends(element, None)  # the whole feed never ends
    assert not ends(progress, array)


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*path, name))
    return found


def test_every_command_has_help_within_80_columns() -> None:
    commands = _commands(typer.main.get_command(app))
    assert ("admin", "tenants", "update") in commands
    assert len(commands) > 20
    for path in commands:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.stdout)
        assert all(len(line) <= 80 for line in result.stdout.splitlines()), path
    assert CliRunner().invoke(app, ["--version"]).stdout == f"stratus {__version__}\n"


def test_a_service_that_cannot_be_reached_is_exit_3(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nothing listens on
        port = sock.getsockname()[1]
        env = {"XDG_CONFIG_HOME": str(tmp_path), "STRATUS_URL": None, "STRATUS_API_KEY": None}
        url = f"http://127.0.0.1:{port}"
        result = CliRunner().invoke(app, ["login", "--url", url, "--api-key", "k"], env=env)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"stratus: cannot reach {url}")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "stratus").exists()
