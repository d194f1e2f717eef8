"""The installed ``stratus`` script in a real 80x24 terminal (tmux): ``submit --array --wait``
draws one progress bar, redrawn in place until 20/20, and the shell sees exit code 0; an
array of longer elements shows some of them done on the way; a long job's bar shows its
progress as the events bring it; ``logs -f`` ends when the job ends;
``watch`` redraws its table in place as jobs come and go, until Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from stratus_client import Client

from tests.cli.conftest import new_key

STRATUS = Path(sys.executable).parent / "stratus"
WITHIN_S = 120.0  # the array's 20 tiny elements end in seconds; this only bounds a hang


class Terminal:
    """A tmux server of its own (its own socket), one 80x24 window running bash."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"stratus-cli-{uuid.uuid4().hex[:8]}"
        self.env = env

    def tmux(self, *args: str) -> str:
        command = ["tmux", "-L", self.socket, "-f", "/dev/null", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=True)
        return done.stdout

    def start(self) -> None:
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", "bash --norc --noprofile")

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-l", line)
        self.tmux("send-keys", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def ctrl_c(self) -> None:
        self.tmux("send-keys", "C-c")

    def wait_for_line(self, pattern: str) -> list[str]:
        """The screen's lines once one of them matches ``pattern`` whole."""
        deadline = time.monotonic() + WITHIN_S
        while True:
            lines = self.screen().splitlines()
            if any(re.fullmatch(pattern, line) for line in lines):
                return lines
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)

    def screens_until(self, pattern: str) -> list[list[str]]:
        """Every screen seen, each a list of lines, until one of them has a line that
        matches ``pattern`` whole (the last screen)."""
        deadline = time.monotonic() + WITHIN_S
        screens = []
        while True:
            lines = self.screen().splitlines()
            screens.append(lines)
            if any(re.fullmatch(pattern, line) for line in lines):
                return screens
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)

    def stop(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal(url: str, key: str, tmp_path: Path) -> Iterator[Terminal]:
    with open_terminal(url, key, tmp_path) as term:
        yield term


@contextmanager
def open_terminal(url: str, key: str, tmp_path: Path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "STRATUS_URL": url,
        "STRATUS_API_KEY": key,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PS1": "$ ",
    }
    term = Terminal(env)
    term.start()
    try:
        yield term
    finally:
        term.stop()


def test_submit_wait_draws_a_live_bar(terminal: Terminal) -> None:
    terminal.type(
        f"{STRATUS} submit montecarlo_pi --array 20 --index-param seed "
        "--param samples=1000 --wait; echo exit=$?"
    )
    lines = terminal.wait_for_line(r"exit=\d+")
    bars = [line for line in lines if "/20" in line]
    assert len(bars) == 1, lines  # redrawn in place, not printed again at each look
    assert "20/20" in bars[0]
    assert "array" in bars[0]
    assert "SUCCEEDED" in bars[0]
    assert all(len(line) <= 80 for line in lines)
    assert "exit=0" in lines
    assert any(line.startswith("SUCCEEDED ") for line in lines)
    assert "elements: SUCCEEDED 20" in lines


def test_watch_redraws_its_table_in_place(url: str, admin: Client, tmp_path: Path) -> None:
    """A tenant whose jobs cannot run: ``watch`` shows both, then one once the first is
    cancelled (the same table redrawn, not a second one), then none; Ctrl-C ends it with
    exit code 0. Its interval is an hour: each redraw is brought by the event stream."""
    key = new_key(admin, "cli-tmux-watch", max_running_jobs=0)
    with Client(url, key) as client, open_terminal(url, key, tmp_path) as terminal:
        first = client.submit("montecarlo_pi", params={"samples": 1000}).id
        second = client.submit("montecarlo_pi", params={"samples": 1000}).id
        terminal.type(f"{STRATUS} watch --interval 3600; echo exit=$?")
        lines = terminal.wait_for_line(r"2 not ended · .*")
        assert {first, second} <= {line.split(" ")[0] for line in lines}
        assert all(len(line) <= 80 for line in lines)
        client.cancel(first)
        lines = terminal.wait_for_line(r"1 not ended · .*")
        assert sum("not ended" in line for line in lines) == 1, lines  # redrawn in place
        assert sum(line.lstrip().startswith("ID ") for line in lines) == 1, lines
        assert not any(line.startswith(first) for line in lines), lines
        assert any(line.startswith(second) for line in lines), lines
        client.cancel(second)
        lines = terminal.wait_for_line(r"0 not ended · .*")
        assert not any(first in line or second in line for line in lines), lines
        terminal.ctrl_c()
        lines = terminal.wait_for_line(r"exit=\d+")
        assert "exit=0" in lines
        assert sum("not ended" in line for line in lines) == 1, lines


LONG = 2_000_000_000  # montecarlo_pi samples: seconds of work, with progress reports between


def test_submit_wait_shows_a_jobs_progress(terminal: Terminal) -> None:
    """One job's bar moves with the progress its events bring (a percentage between 0 and
    100 on the way), then shows the final state; exit 0."""
    terminal.type(f"{STRATUS} submit montecarlo_pi --param samples={LONG} --wait; echo exit=$?")
    screens = terminal.screens_until(r"exit=\d+")
    percents = {
        int(m.group(1))
        for lines in screens
        for line in lines
        if line.lstrip().startswith("job ") or " job " in line
        for m in [re.search(r" (\d+)% ", line)]
        if m
    }
    assert any(0 < p < 100 for p in percents), screens[-1]
    last = screens[-1]
    bars = [line for line in last if re.search(r"job \S+", line) and "SUCCEEDED" in line]
    assert len(bars) == 1, last  # one bar, redrawn in place
    assert "exit=0" in last
    assert any(line.startswith("SUCCEEDED ") for line in last)
    assert all(len(line) <= 80 for lines in screens for line in lines)


def test_logs_follow_ends_when_the_job_ends(url: str, key: str, terminal: Terminal) -> None:
    with Client(url, key) as client:
        job = client.submit("montecarlo_pi", params={"samples": LONG // 4}).id
        terminal.type(f"{STRATUS} logs -f {job}; echo exit=$?")
        lines = terminal.wait_for_line(r"exit=\d+")
        assert client.get(job).is_final
    assert "exit=0" in lines
    assert any("SUCCEEDED" in line for line in lines), lines


def test_an_arrays_bar_moves_as_its_elements_end(terminal: Terminal) -> None:
    """An array of elements of about a second each: the bar shows some of them done on the
    way (its counts read on the array's events and while its stream is quiet), then 8/8."""
    terminal.type(
        f"{STRATUS} submit montecarlo_pi --array 8 --index-param seed "
        f"--param samples={LONG // 8} --wait; echo exit=$?"
    )
    screens = terminal.screens_until(r"exit=\d+")
    done = {
        int(m.group(1))
        for lines in screens
        for line in lines
        if "array " in line
        for m in [re.search(r" (\d)/8 ", line)]
        if m
    }
    assert any(0 < d < 8 for d in done), (done, screens[-1])
    assert 8 in done
    assert "exit=0" in screens[-1]
