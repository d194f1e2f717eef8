"""matmul: ``c = a @ b`` for a (mxk) and b (kxn) float64.

The CPU version calls NumPy's BLAS ``dgemm`` (OpenBLAS, as many threads as the pool process
has) straight into the memory-mapped output: hand-written numba reached 7-19% of it on these
machines (FIELD-NOTES), and numba's own ``np.dot`` would need SciPy's BLAS bindings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.worker.kernels.base import Kernel, KernelInputError, Paths, load_input, output_array


def load(inputs: Paths) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    a = load_input(inputs, "a", ndim=2)
    b = load_input(inputs, "b", ndim=2)
    if a.shape[1] != b.shape[0]:
        raise KernelInputError(
            f"inner dimensions differ: 'a' is {a.shape[0]}x{a.shape[1]}, "
            f"'b' is {b.shape[0]}x{b.shape[1]} (a's columns must equal b's rows)"
        )
    return a, b


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    a, b = load(inputs)
    with output_array(outputs, "c", (a.shape[0], b.shape[1])) as c:
        np.matmul(a, b, out=c)
    return {"shape": [int(a.shape[0]), int(b.shape[1])]}


def warm() -> None:
    np.matmul(np.ones((2, 2)), np.ones((2, 2)))


KERNEL = Kernel("matmul", run_cpu, warm, cuda="services.worker.kernels.matmul_cuda")
