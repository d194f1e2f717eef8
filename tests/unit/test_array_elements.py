"""An element's params and dataset names built from its array's templates, and route ids."""

from __future__ import annotations

import uuid

from shared.jobs.arrays import (
    JobRef,
    element_id,
    element_of,
    new_array_id,
    parse_job_ref,
    public_id,
)


def test_overrides_then_index_param_over_params() -> None:
    e = element_of(
        params={"samples": 10, "seed": 0},
        inputs={"data": "sweep/{index}/in.npy", "shared": "common.npy"},
        outputs={"grid": "sweep/{index}/out-{index}.npy"},
        index=1,
        index_param="seed",
        overrides=[{"samples": 1}, {"samples": 20, "seed": 99}],
    )
    assert e.params == {"samples": 20, "seed": 1}  # the index wins over an override
    assert e.inputs == {"data": "sweep/1/in.npy", "shared": "common.npy"}
    assert e.outputs == {"grid": "sweep/1/out-1.npy"}


def test_an_index_past_the_overrides_takes_the_params() -> None:
    e = element_of(
        params={"samples": 10},
        inputs={},
        outputs={},
        index=5,
        index_param=None,
        overrides=[{"samples": 1}],
    )
    assert e.params == {"samples": 10}


def test_the_templates_are_not_changed() -> None:
    params = {"samples": 10}
    element_of(params=params, inputs={}, outputs={}, index=3, index_param="seed", overrides=None)
    assert params == {"samples": 10}


def test_route_ids() -> None:
    a = uuid.uuid4()
    assert parse_job_ref(str(a)) == JobRef(a)
    assert parse_job_ref(public_id(a, 7)) == JobRef(a, 7)
    for bad in ("nope", f"{a}:", f"{a}:-1", f"{a}:1.5", f"{a}:1:2", f"{a}:٣", f"{a}:1234567890"):
        assert parse_job_ref(bad) is None, bad
    assert element_id(a, 7).hex[:20] == a.hex[:20]
    assert element_id(a, 7) != element_id(a, 8)


def test_no_element_of_an_array_has_the_array_s_own_id() -> None:
    """An array's id ends in 48 one-bits, which no index reaches: element ids never collide
    with it (the materialisation would skip such an element as already there)."""
    for _ in range(100):
        array_id = new_array_id()
        assert array_id.hex.endswith("f" * 12)
        assert element_id(array_id, 0) != array_id
        assert element_id(array_id, (1 << 48) - 2) != array_id
        assert element_id(array_id, 5).hex[:20] == array_id.hex[:20]
