"""Checkpointing kernels stopped after a checkpoint and resumed from it, against the same job
run without a stop: the results must be equal bit for bit.

``python -m tests.worker.checkpoint_cases [cpu|cuda]`` prints one JSON line: case name ->
``[ok, detail]`` (the CUDA cases run under ``NUMBA_ENABLE_CUDASIM=1``, which must be set before
numba is imported: ``test_checkpoint.py`` runs them in a subprocess). Each case runs the
kernel once whole (no checkpoints), then again with a checkpoint after every block, stopped
(``Released``, as on a drain) after its ``stop_after``-th checkpoint, then a third time on the
same folder: that run starts from the checkpoint and must end with the same result and
outputs as the first.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from services.worker import checkpoint

Case = Callable[[Path], tuple[bool, str]]
EVERY_BLOCK = 1e-9  # an interval every block outlasts: a checkpoint after each block
rng = np.random.default_rng(20)


def run(
    kernel: str,
    device: str,
    params: dict[str, Any],
    inputs: dict[str, np.ndarray[Any, Any]],
    folder: Path,
    *,
    ck: Path | None = None,
    stop_after: int = 0,
    tag: str = "",
) -> tuple[dict[str, Any] | None, dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
    """The kernel's result and outputs (result None when it stopped after ``stop_after``
    checkpoints), and what its checkpointer saw."""
    from services.worker.kernels import registry
    from shared.kernels import CATALOGUE

    paths = {}
    for name, arr in inputs.items():
        paths[name] = str(folder / f"in-{name}.npy")
        np.save(paths[name], arr)
    outputs = {n: str(folder / f"out{tag}-{n}.npy") for n in CATALOGUE[kernel].outputs}
    events: list[dict[str, Any]] = []

    def on_event(e: dict[str, Any]) -> None:
        events.append(e)
        saved = sum(1 for x in events if x["event"] == "saved")
        if stop_after and saved >= stop_after:
            checkpoint.request_release()

    spec = None if ck is None else {"folder": str(ck), "interval_s": EVERY_BLOCK}
    result: dict[str, Any] | None = None
    with checkpoint.session(spec, on_event) as c:
        try:
            result = registry.call(kernel, device, params, paths, outputs, threads=1)
        except checkpoint.Released as exc:
            info: dict[str, Any] = {"released": exc.step}
        else:
            info = {}
        info["saved"], info["resumed_from"] = c.saved, c.resumed_from
    got = {} if result is None else {n: np.load(p) for n, p in outputs.items()}
    return result, got, info


def resumed_equal(
    kernel: str,
    params: dict[str, Any],
    inputs: dict[str, np.ndarray[Any, Any]],
    folder: Path,
    *,
    first: str,
    then: str,
    stop_after: int = 1,
    resumes: bool = True,
    ref: str | None = None,
) -> tuple[bool, str]:
    """Stopped on device ``first``, resumed on ``then``, against ``then`` (or ``ref``)
    uninterrupted (``resumes``: whether the second run starts from the checkpoint, or from
    the start)."""
    want, want_out, _ = run(kernel, ref or then, params, inputs, folder, tag="ref")
    ck = folder / "ck"
    stopped, _, info1 = run(kernel, first, params, inputs, folder, ck=ck, stop_after=stop_after)
    if stopped is not None or "released" not in info1:
        return False, f"the first run did not stop: {info1}"
    got, got_out, info2 = run(kernel, then, params, inputs, folder, ck=ck, tag="2")
    expected_from = info1["released"] if resumes else None
    same = got == want and all(
        np.array_equal(got_out[n], want_out[n]) and got_out[n].dtype == want_out[n].dtype
        for n in want_out
    )
    ok = same and info2["resumed_from"] == expected_from
    return ok, json.dumps({"stopped": info1, "resumed": info2, "got": got, "want": want})


def cases(device: str) -> dict[str, Case]:
    """The cases of ``device`` (``cuda``: small sizes for the simulator, and resumes of a
    CPU checkpoint)."""
    found: dict[str, Case] = {}
    grid = rng.normal(size=(9, 11))
    bodies = np.column_stack([rng.normal(size=(6, 6)), rng.uniform(0.5, 1.5, size=6)])
    if device == "cpu":
        big = rng.normal(size=(48, 40))
        many = np.column_stack([rng.normal(size=(40, 6)), rng.uniform(0.5, 1.5, size=40)])
        mc = {"samples": 300 * 4096 + 17, "seed": 5}
        for stop in (1, 2, 3):
            found[f"stencil2d-stop{stop}"] = partial(
                resumed_equal,
                "stencil2d",
                {"iterations": 301},
                {"grid": big},
                first="cpu",
                then="cpu",
                stop_after=stop,
            )
            found[f"nbody-stop{stop}"] = partial(
                resumed_equal,
                "nbody",
                {"steps": 200, "dt": 0.001, "softening": 0.05},
                {"bodies": many},
                first="cpu",
                then="cpu",
                stop_after=stop,
            )
        found["stencil2d-even"] = lambda f: resumed_equal(
            "stencil2d", {"iterations": 300}, {"grid": big}, f, first="cpu", then="cpu"
        )
        found["montecarlo_pi"] = lambda f: resumed_equal(
            "montecarlo_pi", mc, {}, f, first="cpu", then="cpu"
        )
        return found
    # the simulator: a few thousand GPU threads a second, so a few steps of small inputs
    stencil = {"iterations": 7}
    nbody = {"steps": 5, "dt": 0.01, "softening": 0.05}
    found["cuda-stencil2d"] = lambda f: resumed_equal(
        "stencil2d", stencil, {"grid": grid}, f, first="cuda", then="cuda"
    )
    found["cuda-nbody"] = lambda f: resumed_equal(
        "nbody", nbody, {"bodies": bodies}, f, first="cuda", then="cuda"
    )
    # across devices: stencil2d and montecarlo_pi compute the same numbers on both
    found["cpu-to-cuda-stencil2d"] = lambda f: resumed_equal(
        "stencil2d", stencil, {"grid": grid}, f, first="cpu", then="cuda"
    )
    found["cuda-to-cpu-stencil2d"] = lambda f: resumed_equal(
        "stencil2d", stencil, {"grid": grid}, f, first="cuda", then="cpu", stop_after=2
    )
    found["cpu-to-cuda-montecarlo_pi"] = lambda f: resumed_equal(
        "montecarlo_pi",
        {"samples": 66 * 4096 + 5, "seed": 3},
        {},
        f,
        first="cpu",
        then="cuda",
        ref="cpu",  # the same counts; the simulator would take minutes for all 66 streams
    )
    # nbody's rounding differs between devices: a CPU checkpoint is not resumed on a GPU
    found["cpu-to-cuda-nbody-starts-over"] = lambda f: resumed_equal(
        "nbody", nbody, {"bodies": bodies}, f, first="cpu", then="cuda", resumes=False
    )
    return found


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    results: dict[str, tuple[bool, str]] = {}
    for name, fn in cases(device).items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[name] = fn(Path(tmp))
            except Exception:
                results[name] = (False, traceback.format_exc())
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
