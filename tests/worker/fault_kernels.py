"""Kernels that misbehave on purpose, installed into pool processes through the
``stratus.kernels`` entry-point group by ``tests/worker/conftest.py`` (which also tests the
plugin mechanism end to end)."""

from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np
from pydantic import Field

from services.worker.kernels.base import Kernel, Paths
from shared.kernels import KernelSpec, Params


class SpinParams(Params):
    seconds: float = Field(gt=0)
    busy: bool = True  # False: sleep instead


class HogParams(Params):
    megabytes: int = Field(ge=1)


class NoParams(Params):
    pass


def spin(params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1) -> Any:
    """Busy until it has used ``seconds`` of CPU time (pure Python: one core), or asleep for
    ``seconds`` of wall time. CPU time, not wall time, so that what it is charged does not
    depend on how busy the machine is: only how long it takes does."""
    if not params["busy"]:
        time.sleep(params["seconds"])
        return {"loops": 0}
    end = time.process_time() + params["seconds"]
    loops = 0
    while time.process_time() < end:
        loops += 1
    return {"loops": loops}


def segfault(params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1) -> Any:
    return {"never": ctypes.string_at(0)}  # reads address 0: SIGSEGV


def hog(params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1) -> Any:
    block = np.ones(params["megabytes"] * 2**20 // 8)
    return {"sum": float(block.sum())}


def _nothing() -> None:
    return None


def _spec(name: str, params: type[Params]) -> KernelSpec:
    target = f"tests.worker.fault_kernels:{name.upper()}_KERNEL"
    return KernelSpec(name, f"test kernel {name}", params, devices=("cpu",), implementation=target)


SPIN = _spec("spin", SpinParams)
SEGFAULT = _spec("segfault", NoParams)
HOG = _spec("hog", HogParams)
SPIN_KERNEL = Kernel("spin", spin, _nothing)
SEGFAULT_KERNEL = Kernel("segfault", segfault, _nothing)
HOG_KERNEL = Kernel("hog", hog, _nothing)
