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
    # unset: ``concurrency``, twice that while the recent jobs are short (``app.py``,
    # ``CLAIM_AHEAD_MAX_RUN_S``); set: fixed
    prefetch: int | None = None
    lease_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    shutdown_grace_s: float = 20.0
    numba_cache_dir: Path = Path(os.path.expanduser("~/.cache/stratus/numba"))
    warm_kernels: bool = True
    # numba and BLAS threads per pool process; default: the cores shared by the processes
    threads_per_process: int | None = Field(default=None, ge=1)
    cuda_simulator: bool = False  # serve the cuda queue on numba's CUDA simulator
    pool_start_timeout_s: float = 600.0
    # a job's checkpoint larger than this is not written (the job runs on without one)
    checkpoint_max_bytes: int = Field(default=8 * 2**30, ge=0)

    def job_memory_bytes(self) -> int:
        """What one job may allocate: ``limits.job_memory_mb``, or a share of the machine's
        memory for each of the ``concurrency`` slots. 0 (no limit) for the CUDA simulator, a
        development stand-in that runs every GPU thread of a block as a Python thread: their
        stacks (8 MiB each, 256 to a block) would count as the job's memory."""
        if self.device == "cuda" and self.cuda_simulator:
            return 0
        return self.limits.job_memory_bytes(slots=self.concurrency)

    def pool_threads(self) -> int:
        if self.threads_per_process is not None:
            return self.threads_per_process
        return max(1, (os.cpu_count() or 1) // self.concurrency)
