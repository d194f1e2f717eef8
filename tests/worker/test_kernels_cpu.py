"""Every CPU kernel against the contract's NumPy expression, through files, on random inputs
of awkward shapes (1x1, primes, non-square, empty)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from services.worker.kernels import registry
from services.worker.kernels.base import KernelInputError
from tests.worker import reference as ref
from tests.worker.conftest import Save

Out = Callable[[str], str]
rng = np.random.default_rng(20261128)


def call(kernel: str, params: dict[str, object], inputs: dict[str, str], outputs: dict[str, str]):  # type: ignore[no-untyped-def]
    return registry.call(kernel, "cpu", dict(params), inputs, outputs, threads=2)


@pytest.mark.parametrize("n", [0, 1, 2, 97, 1000, 4099])
def test_saxpy(n: int, save: Save, out: Out) -> None:
    x, y = rng.normal(size=n), rng.normal(size=n)
    result = call("saxpy", {"a": -1.75}, {"x": save("x", x), "y": save("y", y)}, {"y": out("y")})
    assert result == {"n": n}
    np.testing.assert_allclose(np.load(out("y")), ref.saxpy(-1.75, x, y), rtol=ref.RTOL)


@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 1, 1), (7, 13, 5), (31, 1, 17), (64, 64, 64), (3, 0, 2)]
)
def test_matmul(m: int, k: int, n: int, save: Save, out: Out) -> None:
    a, b = rng.uniform(size=(m, k)), rng.uniform(size=(k, n))
    result = call("matmul", {}, {"a": save("a", a), "b": save("b", b)}, {"c": out("c")})
    assert result == {"shape": [m, n]}
    np.testing.assert_allclose(np.load(out("c")), ref.matmul(a, b), rtol=ref.RTOL)


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (3, 3), (7, 13), (31, 17), (64, 1)])
@pytest.mark.parametrize("iterations", [1, 2, 7])
def test_stencil2d_is_bit_identical(
    shape: tuple[int, int], iterations: int, save: Save, out: Out
) -> None:
    grid = rng.normal(size=shape)
    call("stencil2d", {"iterations": iterations}, {"grid": save("g", grid)}, {"grid": out("g")})
    result = np.load(out("g"))
    assert np.array_equal(result, ref.stencil2d(grid, iterations))
    if min(shape) > 2 and iterations:
        assert not np.array_equal(result, grid)  # something happened


@pytest.mark.parametrize(
    ("n", "steps", "softening"), [(1, 3, 0.1), (2, 1, 0.0), (13, 3, 0.05), (67, 2, 0.01)]
)
def test_nbody(n: int, steps: int, softening: float, save: Save, out: Out) -> None:
    bodies = ref.bodies(rng, n)
    params = {"steps": steps, "dt": 0.01, "softening": softening}
    result = call("nbody", params, {"bodies": save("b", bodies)}, {"bodies": out("b")})
    want, e0, e1 = ref.nbody(bodies, steps, 0.01, softening)
    np.testing.assert_allclose(np.load(out("b")), want, rtol=ref.RTOL, atol=1e-12)
    assert result["energy_initial"] == pytest.approx(e0, rel=ref.RTOL)
    assert result["energy_final"] == pytest.approx(e1, rel=ref.RTOL)


def test_nbody_coincident_bodies_without_softening_stay_finite(save: Save, out: Out) -> None:
    bodies = ref.bodies(rng, 4)
    bodies[1, 0:3] = bodies[0, 0:3]  # two bodies at one point: that pair contributes nothing
    params = {"steps": 2, "dt": 0.01, "softening": 0.0}
    result = call("nbody", params, {"bodies": save("b", bodies)}, {"bodies": out("b")})
    want, e0, _ = ref.nbody(bodies, 2, 0.01, 0.0)
    got = np.load(out("b"))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=ref.RTOL, atol=1e-12)
    assert result["energy_initial"] == pytest.approx(e0, rel=ref.RTOL)


@pytest.mark.parametrize(
    ("bins", "lo", "hi"),
    [(1, 0.0, 1.0), (7, -1.0, 1.0), (1000, -3.3, 2.9), (13, 1e-3, 1e-3 + 1e-9)],
)
def test_histogram_equals_numpy(bins: int, lo: float, hi: float, save: Save) -> None:
    data = ref.awkward_histogram_data(rng, bins, lo, hi)
    result = call("histogram", {"bins": bins, "range": [lo, hi]}, {"data": save("d", data)}, {})
    assert result["counts"] == ref.histogram(data, bins, lo, hi)
    assert sum(result["counts"]) > 0


def test_histogram_of_integers_and_of_nothing(save: Save) -> None:
    ints = rng.integers(-5, 15, 1000)
    got = call("histogram", {"bins": 10, "range": [0, 10]}, {"data": save("i", ints)}, {})
    assert got["counts"] == ref.histogram(ints, 10, 0.0, 10.0)
    empty = call("histogram", {"bins": 3, "range": [0, 1]}, {"data": save("e", np.array([]))}, {})
    assert empty["counts"] == [0, 0, 0]


def test_histogram_splits_work_between_threads_without_losing_counts() -> None:
    from services.worker.kernels.histogram import BLOCK, histogram

    data = np.concatenate([ref.awkward_histogram_data(rng, 50, 0.0, 1.0)] * 3)
    assert len(data) > BLOCK  # more than one block per chunk
    one = histogram(data, 50, 0.0, 1.0, 1)
    for chunks in (2, 3, 7, len(data) + 5):
        assert histogram(data, 50, 0.0, 1.0, chunks).tolist() == one.tolist()
    assert one.tolist() == ref.histogram(data, 50, 0.0, 1.0)


@pytest.mark.parametrize(
    ("bins", "lo", "hi"),
    [(3, -1e300, 1e300), (100, 1.0, 1.0 + 2**-40), (97, -7.25, 1e-7), (1, -1e-300, 1e-300)],
)
def test_histogram_edges_are_numpys_at_extreme_ranges(
    bins: int, lo: float, hi: float, save: Save
) -> None:
    data = ref.awkward_histogram_data(rng, bins, lo, hi)
    result = call("histogram", {"bins": bins, "range": [lo, hi]}, {"data": save("d", data)}, {})
    assert result["counts"] == ref.histogram(data, bins, lo, hi)


def test_histogram_refuses_bins_narrower_than_a_float_step_as_numpy_does(save: Save) -> None:
    data = save("d", np.ones(3))
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(np.ones(3), 10_000, (1.0, 1.0 + 2**-40))
    with pytest.raises(KernelInputError, match="too narrow for 10000 bins"):
        call("histogram", {"bins": 10_000, "range": [1.0, 1.0 + 2**-40]}, {"data": data}, {})


def test_montecarlo_through_the_registry() -> None:
    result = call("montecarlo_pi", {"samples": 100_000, "seed": 3}, {}, {})
    assert abs(result["estimate"] - np.pi) < 4 * result["std_error"]
