"""A service run as its own process (``python -m services.<name>``), for the tests that
signal it or kill it; whatever is left running is stopped when the block ends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def service_process(
    module: str, env: dict[str, str], log: Path, *, stop_s: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m <module>`` with exactly ``env``, its output appended to ``log``. On exit a
    process still running gets SIGTERM, then SIGKILL after ``stop_s``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
