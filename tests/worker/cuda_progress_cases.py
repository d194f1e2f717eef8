"""The CUDA kernels that iterate report their progress between launches, under the numba CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` before numba is imported; run by
``test_cuda_progress.py``): with a progress sink, each report comes once the block's
launches are done (``cuda.synchronize`` after each block: on a GPU launches are queued and
return at once), the reports grow to 1.0, and the output is bit for bit the output of a run
without reports (one block). Sizes are tiny: the simulator runs a few thousand threads a
second, enough to make several blocks of about ``progress.BLOCK_S``.

``python -m tests.worker.cuda_progress_cases`` prints one JSON line: case -> [ok, detail].
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.worker import reference as ref


def _run(kernel: str, params: dict[str, Any], inputs: dict[str, Any], folder: Path) -> Any:
    from services.worker.kernels import registry
    from shared.kernels import CATALOGUE

    paths = {}
    for name, arr in inputs.items():
        np.save(folder / f"{name}.npy", arr)
        paths[name] = str(folder / f"{name}.npy")
    outputs = {name: str(folder / f"out-{name}.npy") for name in CATALOGUE[kernel].outputs}
    result = registry.call(kernel, "cuda", params, paths, outputs, threads=1)
    return result, {name: np.load(path) for name, path in outputs.items()}


def _with_reports(
    kernel: str, params: dict[str, Any], inputs: dict[str, Any], folder: Path
) -> tuple[bool, str]:
    from numba import cuda

    from services.worker import progress

    (folder / "plain").mkdir()
    (folder / "reported").mkdir()
    plain = _run(kernel, params, inputs, folder / "plain")
    events: list[str] = []
    synchronize = cuda.synchronize

    def counted() -> None:
        events.append("sync")
        synchronize()

    cuda.synchronize = counted
    try:
        with progress.sink(lambda f: events.append(f"report {f:.6f}")):
            reported = _run(kernel, params, inputs, folder / "reported")
    finally:
        cuda.synchronize = synchronize
    fractions = [float(e.split()[1]) for e in events if e.startswith("report")]
    # every report follows a synchronize, none before the block's launches are done
    followed = all(events[i - 1] == "sync" for i, e in enumerate(events) if e.startswith("rep"))
    same = plain[0] == reported[0] and all(
        np.array_equal(plain[1][k], reported[1][k]) for k in plain[1]
    )
    ok = (
        len(fractions) >= 2
        and fractions == sorted(set(fractions))
        and fractions[-1] == 1.0
        and bool(events)
        and events[0] == "sync"
        and followed
        and same
    )
    return ok, json.dumps({"events": events, "same": same})


CASES: dict[str, Callable[[Path], tuple[bool, str]]] = {
    "stencil2d": lambda folder: _with_reports(
        "stencil2d", {"iterations": 24}, {"grid": np.random.default_rng(3).random((9, 7))}, folder
    ),
    "nbody": lambda folder: _with_reports(
        "nbody",
        {"steps": 16, "dt": 0.01, "softening": 0.05},
        {"bodies": ref.bodies(np.random.default_rng(4), 5)},
        folder,
    ),
}


def main() -> None:
    results: dict[str, tuple[bool, str]] = {}
    for name, fn in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[name] = fn(Path(tmp))
            except Exception:
                results[name] = (False, traceback.format_exc())
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
