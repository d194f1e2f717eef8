"""The kernels a pool process can run, by name and device.

Adding a built-in kernel: a module in this package declaring ``KERNEL = Kernel(...)`` (see
``base.Kernel``; its CUDA version in a sibling module named by ``Kernel.cuda``), its public
spec in ``shared/kernels.py``, and one line in ``BUILTIN`` below. Third-party kernels come
through the ``stratus.kernels`` entry-point group: see the docstring of ``shared.kernels``.

CUDA versions are imported only where ``numba.cuda.is_available()`` or the simulator is on
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError

from services.worker.kernels import histogram, matmul, montecarlo, nbody, saxpy, stencil2d
from services.worker.kernels.base import Impl, Kernel, KernelInputError, Paths
from shared.kernels import CATALOGUE, KernelSpec

BUILTIN: tuple[Kernel, ...] = (
    saxpy.KERNEL,
    matmul.KERNEL,
    stencil2d.KERNEL,
    nbody.KERNEL,
    histogram.KERNEL,
    montecarlo.KERNEL,
)


class KernelUnavailable(Exception):
    """The kernel (or its version for this device) is not implemented in this worker."""


def cuda_usable() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no driver, no toolkit: no CUDA kernels in this process
        return False


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def load_kernels(catalogue: Mapping[str, KernelSpec] = CATALOGUE) -> dict[str, Kernel]:
    """Built-in kernels, then every catalogued plugin's ``implementation``."""
    kernels = {k.name: k for k in BUILTIN}
    for spec in catalogue.values():
        if spec.implementation and spec.name not in kernels:
            kernel = _import(spec.implementation)
            if not isinstance(kernel, Kernel) or kernel.name != spec.name:
                raise TypeError(f"{spec.implementation} is not the Kernel of {spec.name!r}")
            kernels[spec.name] = kernel
    return kernels


@functools.cache
def kernels() -> dict[str, Kernel]:
    return load_kernels()


def devices() -> list[str]:
    return ["cpu", "cuda"] if cuda_usable() else ["cpu"]


def implementation(kernel: str, device: str) -> Impl:
    k = kernels().get(kernel)
    if k is not None and device == "cpu":
        return k.cpu
    if k is not None and device == "cuda" and k.cuda and cuda_usable():
        return cast(Impl, _import(k.cuda).run_cuda)
    raise KernelUnavailable(f"kernel {kernel!r} has no {device} implementation in this worker")


def warm_all(device: str = "cpu") -> None:
    """Compile every kernel for ``device``, or load it from numba's on-disk cache."""
    for k in kernels().values():
        if device == "cpu":
            k.warm()
        elif device == "cuda" and k.cuda and cuda_usable():
            _import(k.cuda).warm_cuda()


def checked_params(kernel: str, params: dict[str, Any], inputs: Paths, outputs: Paths) -> Any:
    """The params validated again by the kernel's model, and the input and output names
    checked against its spec: a job fails here, before any compute, with a clear message."""
    spec = CATALOGUE.get(kernel)
    if spec is None:
        raise KernelUnavailable(f"kernel {kernel!r} is not in this worker's catalogue")
    try:
        model = spec.params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise KernelInputError(f"params.{where}: {first['msg']}") from None
    for kind, want, got in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        missing = sorted(set(want) - set(got))
        if missing:
            raise KernelInputError(f"kernel {kernel!r} needs {kind} {missing}")
    return model.model_dump(mode="json")


def call(
    kernel: str, device: str, params: dict[str, Any], inputs: Paths, outputs: Paths, threads: int
) -> dict[str, Any]:
    impl = implementation(kernel, device)
    checked = checked_params(kernel, params, inputs, outputs)
    return impl(checked, inputs, outputs, threads=threads)
