"""montecarlo_pi, CPU: estimate within 4 standard errors (one sample: a hit or a miss),
deterministic per seed."""

from __future__ import annotations

import math

import pytest

from services.worker.kernels.montecarlo import estimate
from services.worker.kernels.registry import KernelUnavailable, implementation


@pytest.mark.parametrize(("samples", "seed"), [(1000, 1), (200_003, 7)])
def test_estimate_within_four_standard_errors(samples: int, seed: int) -> None:
    r = estimate(samples, seed)
    se = 4 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / samples)
    assert abs(r["estimate"] - math.pi) <= 4 * se
    assert r["samples"] == samples


def test_one_sample_is_a_hit_or_a_miss_and_hits_as_often_as_pi_says() -> None:
    """One sample estimates 4 (inside the quarter circle) or 0; over 400 seeds the hits are
    within four standard errors of pi/4."""
    estimates = [estimate(1, seed)["estimate"] for seed in range(400)]
    assert set(estimates) == {0.0, 4.0}
    p = math.pi / 4
    hit_rate = estimates.count(4.0) / len(estimates)
    assert abs(hit_rate - p) <= 4 * math.sqrt(p * (1 - p) / len(estimates))


def test_same_seed_same_estimate() -> None:
    assert estimate(10_000, 3) == estimate(10_000, 3)
    assert estimate(10_000, 3)["estimate"] != estimate(10_000, 4)["estimate"]


def test_registry_refuses_missing_implementations() -> None:
    assert (
        implementation("montecarlo_pi", "cpu")({"samples": 10}, {}, {}, threads=1)["samples"] == 10
    )
    with pytest.raises(KernelUnavailable):
        implementation("montecarlo_pi", "tpu")


def test_estimate_does_not_depend_on_the_thread_count() -> None:
    import numba

    from services.worker.kernels.montecarlo import STREAM

    samples = 3 * STREAM + 5  # four streams, the last one short
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = estimate(samples, 11)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = estimate(samples, 11)
    finally:
        numba.set_num_threads(before)
    assert one == many
