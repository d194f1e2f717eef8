"""Arrays in and out: bad shapes, dtypes and files fail before any compute with a clear
message (``KernelInputError``, never a numba traceback); odd but valid layouts are accepted;
outputs appear whole or not at all; dataset names cannot leave the tenant's folder."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.worker.datasets import InvalidDatasetName, resolve_paths
from services.worker.kernels import registry
from services.worker.kernels.base import KernelInputError, output_array
from shared.kernels import CATALOGUE
from shared.settings import StorageSettings
from tests.worker.conftest import Save

Out = Callable[[str], str]
f64 = np.float64


def run(
    kernel: str, params: Mapping[str, object], inputs: dict[str, str], outputs: dict[str, str]
) -> dict[str, Any]:
    return registry.call(kernel, "cpu", dict(params), inputs, outputs, threads=1)


@pytest.mark.parametrize(
    ("kernel", "params", "arrays", "message"),
    [
        ("saxpy", {"a": 1}, {"x": np.ones(5), "y": np.ones(4)}, "same length, not 5 and 4"),
        ("saxpy", {"a": 1}, {"x": np.ones((2, 2)), "y": np.ones(4)}, "'x' must be a 1-D float64"),
        ("saxpy", {"a": 1}, {"x": np.ones(4, np.float32), "y": np.ones(4)}, "not a 1-D float32"),
        ("saxpy", {"a": 1}, {"x": np.ones(4, np.int64), "y": np.ones(4)}, "not a 1-D int64"),
        ("matmul", {}, {"a": np.ones((3, 4)), "b": np.ones((5, 2))}, "'a' is 3x4, 'b' is 5x2"),
        ("matmul", {}, {"a": np.ones(3), "b": np.ones((3, 2))}, "'a' must be a 2-D float64"),
        ("stencil2d", {"iterations": 1}, {"grid": np.ones(9)}, "'grid' must be a 2-D"),
        ("stencil2d", {"iterations": 1}, {"grid": np.ones((2, 2, 2))}, "3-D float64 array"),
        ("stencil2d", {"iterations": 1}, {"grid": np.ones((3, 3), complex)}, "complex128"),
        ("nbody", {"steps": 1, "dt": 0.1}, {"bodies": np.ones((4, 6))}, "must be n x 7"),
        ("histogram", {"bins": 2, "range": [0, 1]}, {"data": np.ones((2, 2))}, "1-D float64 or"),
        ("histogram", {"bins": 2, "range": [0, 1]}, {"data": np.ones(3, bool)}, "1-D bool array"),
    ],
)
def test_bad_shapes_and_dtypes_fail_with_a_clear_message(
    kernel: str,
    params: dict[str, object],
    arrays: dict[str, np.ndarray[Any, Any]],
    message: str,
    save: Save,
    out: Out,
) -> None:
    inputs = {name: save(name, arr) for name, arr in arrays.items()}
    outputs = {name: out(name) for name in CATALOGUE[kernel].outputs}
    with pytest.raises(KernelInputError, match=re.escape(message)):
        run(kernel, params, inputs, outputs)
    assert not any(Path(p).exists() for p in outputs.values())  # nothing written


def test_missing_unreadable_and_archived_inputs(save: Save, tmp_path: Path, out: Out) -> None:
    y = save("y", np.ones(3))
    with pytest.raises(KernelInputError, match="input 'x': dataset not found"):
        run("saxpy", {"a": 1}, {"x": str(tmp_path / "nope.npy"), "y": y}, {"y": out("y")})
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(KernelInputError, match=re.escape("input 'x' is not a readable .npy array")):
        run("saxpy", {"a": 1}, {"x": str(tmp_path / "junk.npy"), "y": y}, {"y": out("y")})
    np.savez(tmp_path / "z.npz", x=np.ones(3))
    with pytest.raises(KernelInputError, match=re.escape("not a .npy array")):
        run("saxpy", {"a": 1}, {"x": str(tmp_path / "z.npz"), "y": y}, {"y": out("y")})
    objects = save("o", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(KernelInputError, match=re.escape("not a readable .npy array")):
        run("saxpy", {"a": 1}, {"x": objects, "y": y}, {"y": out("y")})


def test_missing_names_and_bad_params_fail_before_compute(save: Save, out: Out) -> None:
    x = save("x", np.ones(3))
    with pytest.raises(KernelInputError, match=r"needs inputs \['y'\]"):
        run("saxpy", {"a": 1}, {"x": x}, {"y": out("y")})
    with pytest.raises(KernelInputError, match=r"needs outputs \['y'\]"):
        run("saxpy", {"a": 1}, {"x": x, "y": x}, {})
    with pytest.raises(
        KernelInputError, match=re.escape("params.iterations: Input should be greater")
    ):
        run("stencil2d", {"iterations": 0}, {"grid": save("g", np.ones((3, 3)))}, {"grid": x})
    for bad_range, why in (
        ([0, float("inf")], "finite number"),
        ([-1e308, 1e308], "range is too wide"),
        ([0.0, 1e-320], "range is too narrow"),
    ):
        with pytest.raises(KernelInputError, match=why):
            run("histogram", {"bins": 1000, "range": bad_range}, {"data": x}, {})
    with pytest.raises(registry.KernelUnavailable):
        run("no_such_kernel", {}, {}, {})


def test_fortran_order_big_endian_and_integer_inputs_are_accepted(save: Save, out: Out) -> None:
    a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    b = np.arange(8.0).reshape(4, 2).astype(">f8")
    run("matmul", {}, {"a": save("a", a), "b": save("b", b)}, {"c": out("c")})
    np.testing.assert_array_equal(np.load(out("c")), a @ b.astype(f64))
    ints = np.array([0, 1, 1, 2, 9, 10, -1])
    got = run("histogram", {"bins": 2, "range": [0, 10]}, {"data": save("i", ints)}, {})
    assert got["counts"] == np.histogram(ints, 2, (0, 10))[0].tolist()


def test_inputs_are_never_written(save: Save, out: Out) -> None:
    bodies = np.random.default_rng(1).normal(size=(1, 7))
    path = save("b", bodies)
    run("nbody", {"steps": 2, "dt": 0.1, "softening": 0.1}, {"bodies": path}, {"bodies": out("b")})
    np.testing.assert_array_equal(np.load(path), bodies)
    assert not np.array_equal(np.load(out("b")), bodies)


def test_output_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "c.npy"

    def fail_half_way() -> None:
        with output_array({"c": str(target)}, "c", (4,)) as arr:
            arr[:] = 1.0
            raise RuntimeError("the kernel failed half way")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left
    with output_array({"c": str(target)}, "c", (4,)) as arr:
        arr[:] = 2.0
    np.testing.assert_array_equal(np.load(target), np.full(4, 2.0))
    with output_array({"c": str(target)}, "c", (0, 3)) as arr:
        pass
    assert np.load(target).shape == (0, 3)
    assert [p.name for p in target.parent.iterdir()] == ["c.npy"]


def _storage(root: Path) -> StorageSettings:
    return StorageSettings.model_validate({"local": {"root": str(root)}})


def test_resolve_paths_maps_names_under_the_tenant_folder(tmp_path: Path) -> None:
    tenant = uuid.uuid4()
    got = resolve_paths(tenant, {"grid": "experiments/plate.npy"}, storage=_storage(tmp_path))
    assert got == {"grid": tmp_path.resolve() / str(tenant) / "experiments" / "plate.npy"}


@pytest.mark.parametrize(
    "name", ["../other/x.npy", "/etc/passwd", "a//b", "a/../../b", "", "a b", "./x", "x/"]
)
def test_resolve_paths_refuses_names_that_escape(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetName):
        resolve_paths(uuid.uuid4(), {"x": name}, storage=_storage(tmp_path))
