"""Kernel implementations, keyed by the names of the catalogue in ``shared.kernels``.

Adding a kernel: one module here with ``run_cpu`` (and ``run_cuda``) and one line below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from services.worker.kernels import montecarlo

Impl = Callable[[dict[str, Any], dict[str, str], dict[str, str]], dict[str, Any]]

IMPLEMENTATIONS: dict[str, dict[str, Impl]] = {
    "montecarlo_pi": {"cpu": montecarlo.run_cpu},
}


def _cuda_usable() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no driver, no toolkit: no CUDA kernels in this process
        return False


if _cuda_usable():
    from services.worker.kernels import montecarlo_cuda

    IMPLEMENTATIONS["montecarlo_pi"]["cuda"] = montecarlo_cuda.run_cuda

WARMERS: list[Callable[[], None]] = [montecarlo.warm]


class KernelUnavailable(Exception):
    """The kernel (or its version for this device) is not implemented in this worker."""


def implementation(kernel: str, device: str) -> Impl:
    impl = IMPLEMENTATIONS.get(kernel, {}).get(device)
    if impl is None:
        raise KernelUnavailable(f"kernel {kernel!r} has no {device} implementation in this worker")
    return impl


def warm_all() -> None:
    for warm in WARMERS:
        warm()
