"""Worker settings."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    port: int = 8002
    name: str = Field(default_factory=_default_name)
    device: Literal["cpu", "cuda"] = "cpu"
    concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    prefetch: int | None = None  # defaults to ``concurrency``
    lease_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    shutdown_grace_s: float = 20.0
    numba_cache_dir: Path = Path(os.path.expanduser("~/.cache/stratus/numba"))
    warm_kernels: bool = True
