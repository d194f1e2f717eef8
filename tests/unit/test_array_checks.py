"""The pure rules of an array's submission checks (``services.gateway.jobs.arrays``): dataset
name templates, the longest index, outputs shared between elements, and the elements that
stand for a group of equal overrides."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from services.gateway.jobs.arrays import check_array
from services.gateway.jobs.schemas import TEMPLATE_PATTERN, DatasetTemplate, JobSubmit
from shared.errors import Invalid
from shared.kernels import KernelSpec, MontecarloPiParams, Params, get_spec
from shared.storage.names import MAX_NAME

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000}}
STENCIL = {"kernel": "stencil2d", "params": {"iterations": 1}}


class BoundedSeed(Params):
    samples: int = Field(ge=1)
    seed: int = Field(ge=0, le=9)


def test_the_template_pattern_is_the_template_rule() -> None:
    """The document's pattern for dataset names (``{index}`` allowed) accepts exactly what
    the submission accepts."""
    pattern, rule = re.compile(TEMPLATE_PATTERN), TypeAdapter(DatasetTemplate)
    tokens = ["a", ".", "/", "-", "{index}", "{", "x}"]
    names = ["".join(p) for n in range(1, 5) for p in itertools.product(tokens, repeat=n)]
    names += ["x" * 248 + "{index}", "x" * 249 + "{index}", "{index}" * 37, "{Index}", "{}"]
    for name in names:
        try:
            rule.validate_python(name)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == (bool(pattern.fullmatch(name)) and len(name) <= MAX_NAME), name


def test_names_are_checked_with_the_longest_index() -> None:
    """``{index}`` (7 characters) is longer than any index below 10,000,000: only a larger
    maximum than the default can make a name too long, at its last element."""
    spec = get_spec("stencil2d")
    name = "a" * (MAX_NAME - len("{index}")) + "{index}"  # 255 characters as given
    body: dict[str, Any] = {**STENCIL, "inputs": {"grid": name}, "outputs": {"grid": "o/{index}"}}
    for size, fits in ((10**9, False), (10**7 + 1, False), (10**7, True)):
        data = JobSubmit.model_validate({**body, "array": {"size": size}})
        if fits:
            assert check_array(data, spec, max_size=10**9).size == size
            continue
        with pytest.raises(Invalid) as refused:
            check_array(data, spec, max_size=10**9)
        assert refused.value.errors[0]["loc"] == ["body", "inputs", "grid"]
        assert str(size - 1) in refused.value.detail


TWO_OUTPUTS = KernelSpec("two", "two outputs", MontecarloPiParams, outputs=("a", "b"))


def test_two_outputs_of_two_elements_may_not_name_one_dataset() -> None:
    body: dict[str, Any] = {**MC, "outputs": {"a": "x{index}", "b": "y{index}"}}
    data = JobSubmit.model_validate({**body, "array": {"size": 20}})
    assert check_array(data, TWO_OUTPUTS, max_size=100).size == 20
    body["outputs"] = {"a": "x{index}", "b": "x1{index}"}  # element 10's a is element 0's b
    data = JobSubmit.model_validate({**body, "array": {"size": 20}})
    with pytest.raises(Invalid) as refused:
        check_array(data, TWO_OUTPUTS, max_size=100)
    assert refused.value.errors[0]["loc"] == ["body", "outputs", "a"]
    assert "'x10'" in refused.value.errors[0]["msg"]


def test_elements_with_one_override_are_checked_at_their_first_and_last_index() -> None:
    """An index_param bounded above: the last index of each group of equal overrides is
    checked, so an element past the bound is found though no override names it."""
    bounded = KernelSpec("bounded", "seed at most 9", BoundedSeed)
    body: dict[str, Any] = {
        **MC,
        "array": {"size": 11, "index_param": "seed", "overrides": [{"samples": 2}] * 3},
    }
    with pytest.raises(Invalid) as refused:
        check_array(JobSubmit.model_validate(body), bounded, max_size=100)
    assert refused.value.errors[0]["loc"] == ["body", "array", "elements", 10, "params", "seed"]
    body["array"]["size"] = 10
    plan = check_array(JobSubmit.model_validate(body), bounded, max_size=100)
    assert [(e.index, e.params["seed"], e.params["samples"]) for e in plan.samples] == [
        (0, 0, 2),
        (9, 9, 1000),
    ]
