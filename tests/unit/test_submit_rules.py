"""The pure rules behind submission checks: ``.npy`` headers, the kernels' shape rules and
footprints, strict params, the dataset-name pattern, and problems that always render."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import Invalid
from shared.kernels import CATALOGUE, MAX_BINS, get_spec
from shared.npy import FIRST_READ, NpyError, header_end, parse_header, read_file_header
from shared.problems import problem
from shared.storage.names import NAME_PATTERN, name_problem

X = "\N{MULTIPLICATION SIGN}"


def npy(arr: Any, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), version=version, allow_pickle=True)
    return buf.getvalue()


def header(data: bytes) -> Any:
    """As the gateway reads it: the first bytes, then the rest of the header if longer."""
    return parse_header(data[: header_end(data[:FIRST_READ])], file_size=len(data))


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0)])
def test_a_header_is_read_from_the_first_bytes(version: tuple[int, int] | None) -> None:
    data = npy(np.zeros((3, 4), dtype=">f8"), version)
    h = header(data)
    assert (h.shape, h.dtype, h.fortran_order) == ((3, 4), np.dtype(">f8"), False)
    assert h.data_offset + h.nbytes == len(data)
    assert not h.is_native_float64
    assert h.dims() == f"3{X}4"
    fortran = header(npy(np.asfortranarray(np.zeros((2, 3)))))
    assert fortran.fortran_order
    assert not fortran.is_native_float64
    assert header(npy(np.zeros(5))).is_native_float64


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not a .npy file"),
        (b"not an array", "not a .npy file"),
        (b"PK\x03\x04" + bytes(100), "not a .npy file"),  # an .npz archive
        (b"\x93NUMPY\x09\x00" + bytes(100), "unsupported .npy format version 9.0"),
        (b"\x93NUMPY\x01\x00\xff\xff" + bytes(100), "too long"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'", "cut short"),
        (b"\x93NUMPY\x01\x00\x08\x00__import__('os')\n", "cannot be read"),
    ],
)
def test_what_is_not_a_usable_header_says_why(data: bytes, says: str) -> None:
    with pytest.raises(NpyError, match=re.escape(says)) as caught:
        header(data)
    assert "pickle" not in str(caught.value)


def test_a_header_must_match_the_file_size() -> None:
    data = npy(np.zeros(10))
    with pytest.raises(NpyError, match="truncated"):
        header(data[:-8])
    with pytest.raises(NpyError, match="truncated or padded"):
        header(data + bytes(8))
    negative = data.replace(b"(10,)", b"(-1,)")
    with pytest.raises(NpyError, match="negative"):
        header(negative)


def test_an_object_array_is_described_not_loaded() -> None:
    h = header(npy(np.array([1, "a"], dtype=object)))
    assert h.dtype.hasobject
    check = get_spec("histogram").check_inputs({"data": h}, {"bins": 2})
    assert check.problems == {"data": "dtype object is not supported (float64 or integer only)"}


def test_the_worker_reads_the_same_header_from_a_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 4)))
    np.save(tmp_path / "b.npy", np.ones((5, 2)))
    headers = {n: read_file_header(tmp_path / f"{n}.npy") for n in ("a", "b")}
    check = get_spec("matmul").check_inputs(headers, {})
    assert check.problems == {
        "b": f"matmul: a is 3{X}4 but b is 5{X}2 (a's columns must equal b's rows)"
    }


def test_footprints_predict_outputs_and_working_memory() -> None:
    a, b = header(npy(np.ones((40, 3)))), header(npy(np.ones((3, 50))))
    fp = get_spec("matmul").check_inputs({"a": a, "b": b}, {}).footprint
    assert fp is not None
    assert fp.outputs["c"].shape == (40, 50)
    assert fp.outputs["c"].file_bytes == len(npy(np.ones((40, 50))))
    assert (fp.inputs, fp.working) == (a.nbytes + b.nbytes, 0)
    grid = header(npy(np.ones((30, 30), dtype=">f8")))  # byte-swapped: a native copy too
    fp = get_spec("stencil2d").check_inputs({"grid": grid}, {"iterations": 1}).footprint
    assert fp is not None
    assert fp.working == 2 * grid.nbytes
    assert fp.memory == grid.nbytes + fp.output_bytes + fp.working
    ints = header(npy(np.arange(100, dtype=np.int8)))
    fp = get_spec("histogram").check_inputs({"data": ints}, {"bins": 10}).footprint
    assert fp is not None
    assert (fp.inputs, fp.outputs) == (100, {})  # integers are converted block by block


def test_every_builtin_kernel_with_inputs_has_shape_rules() -> None:
    for spec in CATALOGUE.values():
        if spec.inputs and spec.implementation is None:
            assert spec.rules is not None, spec.name


@pytest.mark.parametrize(
    ("kernel", "params", "field"),
    [
        ("montecarlo_pi", {"samples": True}, "samples"),
        ("montecarlo_pi", {"samples": "10"}, "samples"),
        ("montecarlo_pi", {"samples": 10.5}, "samples"),
        ("montecarlo_pi", {"samples": 10, "seed": False}, "seed"),
        ("saxpy", {"a": "1"}, "a"),
        ("saxpy", {"a": True}, "a"),
        ("nbody", {"steps": 1, "dt": "0.1"}, "dt"),
        ("histogram", {"bins": MAX_BINS + 1, "range": [0, 1]}, "bins"),
        ("histogram", {"bins": 2, "range": [0, "1"]}, "range"),
    ],
)
def test_params_are_strict_and_bounded(kernel: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as caught:
        get_spec(kernel).validate_params(params)
    assert any(e["loc"][:3] == ["body", "params", field] for e in caught.value.errors)


def test_params_keep_json_numbers() -> None:
    assert get_spec("saxpy").validate_params({"a": 2}) == {"a": 2.0}
    spec = get_spec("histogram")
    assert spec.validate_params({"bins": 3, "range": [0, 1]}) == {"bins": 3, "range": [0.0, 1.0]}
    assert spec.describe()["params_schema"]["properties"]["bins"]["maximum"] == MAX_BINS
    with pytest.raises(Invalid, match="Unicode"):
        get_spec("montecarlo_pi").validate_params({"samples": 1, "seed": "\ud800"})


def test_the_name_pattern_is_the_name_rule() -> None:
    pattern = re.compile(NAME_PATTERN)
    names = ["".join(p) for n in range(1, 6) for p in itertools.product("a./-_", repeat=n)]
    names += ["x" * 255, "x" * 256, "a b", "a\x00b", "ü", "../x", "a/../b", "...", "a/.b"]
    for name in names:
        by_pattern = bool(pattern.fullmatch(name)) and len(name) <= 255
        assert by_pattern == (name_problem(name) is None), name


def test_a_problem_with_a_lone_surrogate_renders() -> None:
    r = problem(422, "Invalid", "bad \ud800", errors=[{"loc": ["body", "\ud800"], "msg": "x"}])
    body = json.loads(bytes(r.body))
    assert body["detail"] == "bad \ufffd"
    assert body["errors"][0]["loc"] == ["body", "\ufffd"]
