"""The installed ``stratus`` script in a real 80x24 terminal (tmux): ``submit --array --wait``
draws one progress bar, redrawn in place until 20/20, and the shell sees exit code 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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

    def wait_for_line(self, pattern: str) -> list[str]:
        """The screen's lines once one of them matches ``pattern`` whole."""
        deadline = time.monotonic() + WITHIN_S
        while True:
            lines = self.screen().splitlines()
            if any(re.fullmatch(pattern, line) for line in lines):
                return lines
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)

    def stop(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal(url: str, key: str, tmp_path: Path) -> Iterator[Terminal]:
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
