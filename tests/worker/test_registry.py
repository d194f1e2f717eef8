"""The registry: one implementation per catalogued kernel; third-party kernels through the
``stratus.kernels`` entry points; the gateway's side never imports numba."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.worker.kernels import registry
from services.worker.kernels.base import Kernel
from shared.kernels import BUILTIN, CATALOGUE, KernelSpec, build_catalogue, plugin_specs
from tests.worker import fault_kernels
from tests.worker.conftest import install_plugin


def test_every_catalogued_kernel_has_a_cpu_and_a_cuda_implementation() -> None:
    assert {k.name for k in registry.BUILTIN} == set(CATALOGUE)
    for kernel in registry.BUILTIN:
        assert registry.implementation(kernel.name, "cpu") is kernel.cpu
        assert kernel.cuda is not None
        assert kernel.cuda.startswith("services.worker.kernels.")


def test_cuda_versions_are_refused_where_cuda_is_not_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "cuda_usable", lambda: False)
    assert registry.devices() == ["cpu"]
    with pytest.raises(registry.KernelUnavailable, match="no cuda implementation"):
        registry.implementation("saxpy", "cuda")
    with pytest.raises(registry.KernelUnavailable, match="no tpu implementation"):
        registry.implementation("saxpy", "tpu")


def test_plugins_come_from_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path)))
    specs = plugin_specs()
    assert {s.name for s in specs} == {"spin", "segfault", "hog"}
    catalogue = build_catalogue(BUILTIN, specs)
    assert catalogue["spin"] is fault_kernels.SPIN
    assert catalogue["spin"].describe()["devices"] == ["cpu"]
    assert "implementation" not in catalogue["spin"].describe()  # not part of the API
    kernels = registry.load_kernels(catalogue)
    assert kernels["spin"] is fault_kernels.SPIN_KERNEL
    assert kernels["saxpy"] is registry.BUILTIN[0]


def test_a_plugin_cannot_take_a_built_in_name_and_broken_ones_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    impostor = KernelSpec("saxpy", "not saxpy", fault_kernels.NoParams, implementation="x:y")
    assert build_catalogue(BUILTIN, [impostor])["saxpy"] is BUILTIN[0]
    dist = tmp_path / "broken-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[stratus.kernels]\nmissing = no_such_module:SPEC\nnot_a_spec = os:path\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugin_specs() == []


def test_a_plugin_implementation_must_be_its_kernel() -> None:
    wrong = KernelSpec(
        "spin2", "", fault_kernels.NoParams, implementation="tests.worker.fault_kernels:HOG_KERNEL"
    )
    with pytest.raises(TypeError, match="is not the Kernel of 'spin2'"):
        registry.load_kernels({"spin2": wrong})
    assert isinstance(fault_kernels.HOG_KERNEL, Kernel)


def test_the_gateway_and_the_worker_process_never_import_numba() -> None:
    code = (
        "import sys, shared.kernels, services.worker.app, services.worker.runner\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "print(len(shared.kernels.CATALOGUE))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6"
