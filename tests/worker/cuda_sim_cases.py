"""The CUDA kernels' test cases, run by ``test_cuda_sim.py`` in one subprocess under the
numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is imported).

``python -m tests.worker.cuda_sim_cases`` prints one JSON line: case name -> ``[ok, detail]``.
Sizes stay small (the simulator runs about 3,300 GPU threads a second) but awkward: 1x1,
primes, non-square, not a multiple of the block.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.worker import reference as ref

Case = Callable[[Path], tuple[bool, str]]
CASES: dict[str, Case] = {}
GPU_CASES: dict[str, Case] = {}  # large sizes, run on a real GPU only (``tools/gpu_check.sh``)
rng = np.random.default_rng(7)
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def case(name: str, *, gpu_only: bool = False) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        (GPU_CASES if gpu_only else CASES)[name] = fn
        return fn

    return register


def call(kernel: str, params: dict[str, Any], inputs: dict[str, Any], folder: Path) -> Any:
    from services.worker.kernels import registry
    from shared.kernels import CATALOGUE

    paths = {}
    for name, arr in inputs.items():
        np.save(folder / f"{name}.npy", arr)
        paths[name] = str(folder / f"{name}.npy")
    outputs = {name: str(folder / f"out-{name}.npy") for name in CATALOGUE[kernel].outputs}
    result = registry.call(kernel, "cuda", params, paths, outputs, threads=1)
    return result, {name: np.load(path) for name, path in outputs.items()}


def close(got: Any, want: Any) -> tuple[bool, str]:
    ok = got.shape == want.shape and np.allclose(got, want, rtol=ref.RTOL, atol=1e-12)
    return bool(ok), f"max abs diff {np.max(np.abs(got - want), initial=0.0):.3g}"


for n in (1, 97, 1000):

    @case(f"saxpy-{n}")
    def _saxpy(folder: Path, n: int = n) -> tuple[bool, str]:
        x, y = rng.normal(size=n), rng.normal(size=n)
        _, out = call("saxpy", {"a": 0.5}, {"x": x, "y": y}, folder)
        return close(out["y"], ref.saxpy(0.5, x, y))


for m, k, n in ((1, 1, 1), (17, 13, 5), (33, 17, 19), (3, 0, 2)):

    @case(f"matmul-{m}x{k}x{n}")
    def _matmul(folder: Path, m: int = m, k: int = k, n: int = n) -> tuple[bool, str]:
        a, b = rng.uniform(size=(m, k)), rng.uniform(size=(k, n))
        _, out = call("matmul", {}, {"a": a, "b": b}, folder)
        return close(out["c"], a @ b)


for rows, cols, its in ((1, 1, 1), (3, 3, 2), (9, 40, 1), (19, 37, 2)):

    @case(f"stencil2d-{rows}x{cols}-{its}")
    def _stencil(folder: Path, r: int = rows, c: int = cols, it: int = its) -> tuple[bool, str]:
        grid = rng.normal(size=(r, c))
        _, out = call("stencil2d", {"iterations": it}, {"grid": grid}, folder)
        return bool(np.array_equal(out["grid"], ref.stencil2d(grid, it))), "bit-identical"


for bins in (7, 4097):

    @case(f"histogram-{bins}-bins")
    def _histogram(folder: Path, bins: int = bins) -> tuple[bool, str]:
        data = ref.awkward_histogram_data(rng, bins, -1.0, 2.0)[: 600 + bins % 1000]
        result, _ = call("histogram", {"bins": bins, "range": [-1.0, 2.0]}, {"data": data}, folder)
        want = ref.histogram(data, bins, -1.0, 2.0)
        return result["counts"] == want, f"{sum(want)} counted"


@case("histogram-integers-and-empty")
def _histogram_ints(folder: Path) -> tuple[bool, str]:
    ints = rng.integers(-3, 12, 300)
    got, _ = call("histogram", {"bins": 10, "range": [0.0, 10.0]}, {"data": ints}, folder)
    empty, _ = call("histogram", {"bins": 3, "range": [0.0, 1.0]}, {"data": np.array([])}, folder)
    ok = got["counts"] == ref.histogram(ints, 10, 0.0, 10.0) and empty["counts"] == [0, 0, 0]
    return ok, ""


for n, steps, soft in ((1, 1, 0.1), (13, 2, 0.05), (130, 1, 0.01)):

    @case(f"nbody-{n}-bodies")
    def _nbody(folder: Path, n: int = n, steps: int = steps, soft: float = soft) -> Any:
        bodies = ref.bodies(rng, n)
        params = {"steps": steps, "dt": 0.01, "softening": soft}
        result, out = call("nbody", params, {"bodies": bodies}, folder)
        want, e0, e1 = ref.nbody(bodies, steps, 0.01, soft)
        ok, detail = close(out["bodies"], want)
        energies = math.isclose(result["energy_initial"], e0, rel_tol=ref.RTOL) and math.isclose(
            result["energy_final"], e1, rel_tol=ref.RTOL
        )
        return ok and energies, f"{detail}; energies {result} vs {e0}, {e1}"


@case("montecarlo_pi")
def _montecarlo(folder: Path) -> tuple[bool, str]:
    runs = [call("montecarlo_pi", {"samples": s, "seed": 5}, {}, folder)[0] for s in (1, 127, 1000)]
    again = call("montecarlo_pi", {"samples": 1000, "seed": 5}, {}, folder)[0]
    se = 4 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / 1000)
    ok = (
        runs[0]["estimate"] in (0.0, 4.0)
        and runs[1]["samples"] == 127
        and abs(runs[2]["estimate"] - math.pi) < 4 * se
        and again == runs[2]  # same seed, same streams
    )
    return ok, json.dumps(runs)


@case("montecarlo_pi-same-counts-as-the-cpu")
def _montecarlo_cpu(folder: Path) -> tuple[bool, str]:
    from services.worker.kernels import registry

    params = {"samples": 5000 if SIMULATED else 10**8 + 7, "seed": 2**40 + 3}
    gpu = call("montecarlo_pi", params, {}, folder)[0]
    cpu = registry.call("montecarlo_pi", "cpu", params, {}, {}, threads=1)
    return gpu == cpu, f"{gpu} vs {cpu}"


@case("bad-input-fails-before-the-device")
def _bad_input(folder: Path) -> tuple[bool, str]:
    from services.worker.kernels.base import KernelInputError

    try:
        call("matmul", {}, {"a": np.ones((2, 3)), "b": np.ones((2, 3))}, folder)
    except KernelInputError as exc:
        return "inner dimensions differ" in str(exc), str(exc)
    return False, "no error"


# On a real GPU (not the simulator) the same kernels on sizes that need many blocks and
# several grid-stride rounds: ``tools/gpu_check.sh`` runs this module on a GPU machine.


@case("large-saxpy", gpu_only=True)
def _saxpy_large(folder: Path) -> tuple[bool, str]:
    x, y = rng.normal(size=10**7 + 3), rng.normal(size=10**7 + 3)
    _, out = call("saxpy", {"a": -1.5}, {"x": x, "y": y}, folder)
    return close(out["y"], ref.saxpy(-1.5, x, y))


@case("large-matmul-numba-tiles", gpu_only=True)
def _matmul_tiled(folder: Path) -> tuple[bool, str]:
    from numba import cuda

    from services.worker.kernels import matmul_cuda

    a, b = rng.uniform(size=(1000, 777)), rng.uniform(size=(777, 1031))
    dc = cuda.device_array((1000, 1031))
    matmul_cuda.matmul_tiled(cuda.to_device(a), cuda.to_device(b), dc)
    return close(dc.copy_to_host(), a @ b)


@case("large-matmul", gpu_only=True)
def _matmul_large(folder: Path) -> tuple[bool, str]:
    a, b = rng.uniform(size=(1000, 777)), rng.uniform(size=(777, 1031))
    _, out = call("matmul", {}, {"a": a, "b": b}, folder)
    return close(out["c"], a @ b)


@case("large-stencil2d", gpu_only=True)
def _stencil_large(folder: Path) -> tuple[bool, str]:
    grid = rng.normal(size=(1025, 2047))
    _, out = call("stencil2d", {"iterations": 5}, {"grid": grid}, folder)
    return bool(np.array_equal(out["grid"], ref.stencil2d(grid, 5))), "bit-identical"


@case("large-histogram", gpu_only=True)
def _histogram_large(folder: Path) -> tuple[bool, str]:
    data = np.concatenate(
        [rng.normal(0.5, 0.7, 10**7), ref.awkward_histogram_data(rng, 4097, -1.0, 2.0)]
    )
    result, _ = call("histogram", {"bins": 4097, "range": [-1.0, 2.0]}, {"data": data}, folder)
    want = ref.histogram(data, 4097, -1.0, 2.0)
    return result["counts"] == want, f"{sum(want)} counted"


@case("large-nbody", gpu_only=True)
def _nbody_large(folder: Path) -> Any:
    bodies = ref.bodies(rng, 2000)
    result, out = call(
        "nbody", {"steps": 2, "dt": 0.01, "softening": 0.05}, {"bodies": bodies}, folder
    )
    want, e0, e1 = ref.nbody(bodies, 2, 0.01, 0.05)
    ok, detail = close(out["bodies"], want)
    energies = math.isclose(result["energy_initial"], e0, rel_tol=ref.RTOL) and math.isclose(
        result["energy_final"], e1, rel_tol=ref.RTOL
    )
    return ok and energies, f"{detail}; energies {result} vs {e0}, {e1}"


@case("large-montecarlo_pi", gpu_only=True)
def _montecarlo_large(folder: Path) -> tuple[bool, str]:
    run = call("montecarlo_pi", {"samples": 10**8, "seed": 11}, {}, folder)[0]
    se = 4 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / 10**8)
    return abs(run["estimate"] - math.pi) < 4 * se, json.dumps(run)


def main() -> None:
    results: dict[str, tuple[bool, str]] = {}
    cases = CASES if SIMULATED else {**CASES, **GPU_CASES}
    for name, fn in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[name] = fn(Path(tmp))
            except Exception:
                results[name] = (False, traceback.format_exc())
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
