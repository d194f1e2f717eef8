"""Every ``stratus`` command has ``--json`` (scripts read each one's answer), and ``logs``
prints JSON Lines with it: the units, then against the cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import typer.main
from stratus_client.cli.app import app
from stratus_client.cli.history import log_json

from tests.cli.conftest import MC, Stratus


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    children = getattr(command, "commands", None)
    if children is None:
        yield path, command
        return
    for name, child in children.items():
        yield from _commands(child, (*path, name))


def test_every_command_has_json() -> None:
    found = dict(_commands(typer.main.get_command(app)))
    assert len(found) >= 30
    assert ("logs",) in found
    without = [
        " ".join(path)
        for path, command in found.items()
        if "--json" not in [o for p in command.params for o in getattr(p, "opts", [])]
    ]
    assert without == []


def test_a_log_line_as_json() -> None:
    line = "2026-12-06T20:01:02.345Z [attempt 2] QUEUED -> RUNNING on w1: [x] y"
    assert log_json(line) == {
        "at": "2026-12-06T20:01:02.345Z",
        "attempt": 2,
        "text": "QUEUED -> RUNNING on w1: [x] y",
    }
    assert log_json("odd") == {"at": None, "attempt": None, "text": "odd"}


def test_logs_json_whole_and_followed(stratus: Stratus) -> None:
    job = stratus.json("submit", "montecarlo_pi", *MC)["id"]
    followed = [json.loads(x) for x in stratus.ok("logs", job, "-f", "--json").stdout.splitlines()]
    whole = [json.loads(x) for x in stratus.ok("logs", job, "--json").stdout.splitlines()]
    text = stratus.ok("logs", job).stdout.splitlines()
    assert len(whole) == len(text)
    assert sorted(map(json.dumps, followed)) == sorted(map(json.dumps, whole))
    assert all(isinstance(d["attempt"], int) and d["at"] for d in whole)
    assert any("SUCCEEDED" in d["text"] for d in whole), whole
