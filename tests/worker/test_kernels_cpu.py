"""Every CPU kernel against the contract's NumPy expression, through files, on random inputs
of awkward shapes (1x1, primes, non-square, empty)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numba
import numpy as np
import pytest

from services.worker.kernels import registry
from services.worker.kernels.base import KernelInputError, readonly
from tests.worker import reference as ref
from tests.worker.conftest import Save

Out = Callable[[str], str]
rng = np.random.default_rng(20261128)


def call(
    kernel: str, params: Mapping[str, object], inputs: dict[str, str], outputs: dict[str, str]
) -> dict[str, Any]:
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


@pytest.mark.parametrize("shape", [(3, 3), (256, 256), (520, 1030), (300, 2100), (1100, 40)])
def test_stencil2d_tiles_are_bit_identical_to_step_by_step(shape: tuple[int, int]) -> None:
    """Several tiles of columns and bands of rows, several passes of each depth and parity:
    the same bits as one sweep per step, the other buffer's edges untouched (small grids
    take the sweeps)."""
    from services.worker.kernels import stencil2d

    blocks = -(-(shape[1] - 2) // stencil2d.TILE_COLUMNS)
    bands = max(1, min(-(-stencil2d.TILES // blocks), (shape[0] - 2) // stencil2d.BAND_ROWS))
    assert (bands * blocks >= stencil2d.MIN_TILES) == (shape[0] >= 300)  # tiled or not

    for iterations in (1, 2, 5, 16, 17, 33, 40):
        grid = rng.normal(size=shape)
        a, b = grid.copy(), grid.copy()
        stencil2d.jacobi(a, b, iterations)
        c, d = grid.copy(), grid.copy()
        stencil2d.jacobi_steps(c, d, iterations)
        got, other = (b, a) if iterations % 2 else (a, b)
        assert np.array_equal(got, d if iterations % 2 else c), iterations
        for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
            assert np.array_equal(other[edge], grid[edge])
    assert np.array_equal(got, ref.stencil2d(grid, 40))


@pytest.mark.parametrize(("n", "tile"), [(100, 64), (511, 64), (1500, 192)])
def test_nbody_pairs_in_blocks_agree_with_numpy(n: int, tile: int) -> None:
    """The fast pass over several blocks of bodies (each pair once, summed in chunks)."""
    from services.worker.kernels import nbody

    pos = rng.normal(size=(3, n))
    m = rng.uniform(0.5, 1.5, n)
    blocks = -(-n // nbody.pair_tile(n))
    assert nbody.pair_tile(n) == tile
    assert nbody.pair_tile(8192) == nbody.TILE
    assert nbody.pair_chunks(n) == min(nbody.CHUNKS, blocks * (blocks + 1) // 2)
    acc = np.empty_like(pos)
    nbody.accelerations(pos, m, 1e-4, acc)
    want = ref.accelerations(pos.T.copy(), m, 1e-4).T
    np.testing.assert_allclose(acc, want, rtol=ref.RTOL, atol=1e-12 * np.abs(want).max())
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:  # the chunks are a function of n: the same bits on one thread
        one = np.empty_like(pos)
        nbody.accelerations(pos, m, 1e-4, one)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(one, acc)


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


@pytest.mark.parametrize(("scale", "softening"), [(1.0, 0.05), (1e-12, 1e-13), (1e12, 1e11)])
def test_nbody_fast_inverse_square_root_agrees_with_numpy(scale: float, softening: float) -> None:
    from services.worker.kernels import nbody

    pos = rng.normal(size=(3, 301)) * scale
    pos[:, 7] = pos[:, 3]  # two bodies at one point: softened, so r2 > 0 still
    m = rng.uniform(0.5, 1.5, 301)
    vel = rng.normal(size=(3, 301))
    eps2 = softening**2
    assert nbody.fast_inverse_ok(pos, eps2)
    acc = np.empty_like(pos)
    nbody.accelerations(pos, m, eps2, acc)
    want = ref.accelerations(pos.T.copy(), m, eps2).T
    np.testing.assert_allclose(acc, want, rtol=ref.RTOL, atol=1e-12 * np.abs(want).max())
    got = nbody.energy(pos, vel, m, eps2)
    assert got == pytest.approx(ref.energy(pos.T.copy(), vel.T.copy(), m, eps2), rel=ref.RTOL)


def test_nbody_takes_the_exact_pass_outside_the_float32_range() -> None:
    from services.worker.kernels import nbody

    pos = rng.normal(size=(3, 40))
    assert nbody.fast_inverse_ok(pos, 1e-4)
    assert not nbody.fast_inverse_ok(pos, 0.0)  # no softening: r2 may be 0 or tiny
    assert not nbody.fast_inverse_ok(pos, nbody.R2_MIN / 2)
    assert not nbody.fast_inverse_ok(pos * 1e20, 1e-4)  # r2 beyond R2_MAX
    assert not nbody.fast_inverse_ok(np.where(pos > 1.5, np.nan, pos), 1e-4)
    assert not nbody.fast_inverse_ok(np.where(pos > 1.5, np.inf, pos), 1e-4)
    assert nbody.fast_inverse_ok(np.empty((3, 0)), 1e-4)
    m = rng.uniform(0.5, 1.5, 40)
    for p, eps2 in ((pos * 1e20, 1e-4), (pos * 1e-40, 1e-90), (pos, 0.0)):
        acc = np.empty_like(p)
        nbody.accelerations(p, m, eps2, acc)
        want = ref.accelerations(p.T.copy(), m, eps2).T
        np.testing.assert_allclose(acc, want, rtol=ref.RTOL, atol=1e-12 * np.abs(want).max())


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


@pytest.mark.parametrize("segment", [1, 2, 7, 1023, 1024, 1025, 2**30])
def test_histogram_adds_up_its_int32_lanes_every_segment(segment: int) -> None:
    from services.worker.kernels.histogram import _count

    data = readonly(np.concatenate([ref.awkward_histogram_data(rng, 20, -1.0, 1.0)] * 2))
    for begin, end in ((0, len(data)), (3, len(data) - 2), (5, 6), (4, 4)):
        counts = np.zeros(21, np.int64)
        _count(data, begin, end, -1.0, 1.0, counts, segment)
        assert counts[:-1].tolist() == ref.histogram(data[begin:end], 20, -1.0, 1.0)
        assert counts.sum() == end - begin  # the last slot: values outside and NaN


@pytest.mark.parametrize("bins", [2047, 2048, 5000])
def test_histogram_with_bins_beyond_the_lanes(bins: int) -> None:
    from services.worker.kernels.histogram import LANE_BINS_LIMIT, histogram

    assert 2047 < LANE_BINS_LIMIT < 5000
    data = readonly(ref.awkward_histogram_data(rng, bins, -2.0, 3.0))
    for chunks in (1, 2):
        got = histogram(data, bins, -2.0, 3.0, chunks)
        assert got.tolist() == ref.histogram(data, bins, -2.0, 3.0)


@pytest.mark.parametrize(
    ("bins", "lo", "hi"),
    [
        (1000, 0.0, 1.0),
        (7, -1.0, 1.0),
        (100, 1.0, 1.0 + 2**-40),
        (13, 1e-3, 1e-3 + 1e-9),
        (3, -1e300, 1e300),
        (5000, 1e6, 1e6 + 1.0),
    ],
)
def test_histogram_first_guesses_near_the_edges(bins: int, lo: float, hi: float) -> None:
    """Values at 0.5 to 100 ``delta`` from the edges, and at a few ulps, in some blocks only:
    blocks of safe guesses, unsure ones redone, runs of exact blocks, safe guesses again."""
    from services.worker.kernels.histogram import BLOCK, EXACT_RUN, _delta, histogram

    width = (hi - lo) / bins
    delta = _delta(bins, lo, hi)
    k = rng.integers(0, bins + 1, 4000)
    near = (
        lo
        + (k + rng.choice([0.5, 1.0, 1.01, 2.0, 100.0], 4000) * rng.choice([-1, 1], 4000) * delta)
        * width
    )
    edges = np.linspace(lo, hi, bins + 1)[k[:500]]
    near = np.concatenate([near, edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    blocks = [rng.uniform(lo, hi, BLOCK) for _ in range(3 * EXACT_RUN)]
    for b in (3, 4, 20, 2 * EXACT_RUN):  # unsure values in a few blocks, at random places
        pick = rng.integers(0, len(near), 50)
        blocks[b][rng.integers(0, BLOCK, 50)] = near[pick]
    data = readonly(np.concatenate([*blocks, near, rng.uniform(lo, hi, 77)]))
    want = ref.histogram(data, bins, lo, hi)
    for chunks in (1, 2, 3):
        assert histogram(data, bins, lo, hi, chunks).tolist() == want


def test_histogram_first_guess_alone_serves_random_values() -> None:
    from services.worker.kernels.histogram import BLOCK, _delta, _guess, _indices

    data = readonly(rng.uniform(-0.1, 1.1, BLOCK))
    guessed, exact = np.empty(BLOCK, np.int32), np.empty(BLOCK, np.int32)
    assert _guess(data, 0, 0.0, 1.0, 1000, _delta(1000, 0.0, 1.0), guessed) == 0  # all sure
    _indices(data, 0, 0.0, 1.0, 1000, exact)
    assert np.array_equal(guessed, exact)
    want = np.searchsorted(np.linspace(0.0, 1.0, 1001), data, side="right") - 1
    want[(data < 0.0) | (data >= 1.0)] = 1000  # no value is 1.0 itself (the last bin)
    assert exact.tolist() == want.tolist()
    assert 0 < np.count_nonzero(exact == 1000) < BLOCK  # 1000: outside
    assert _guess(readonly(np.array([0.5, 2.0])), 0, 0.0, 1.0, 4, 1e-12, guessed[:2]) == 1


@pytest.mark.parametrize(
    ("bins", "lo", "hi"), [(1000, 0.0, 1.0), (7, -1.0, 1.0), (3, -1e300, 1e300), (50, 1e6, 1e6 + 1)]
)
def test_histogram_first_guess_is_sure_only_where_it_is_the_bin(
    bins: int, lo: float, hi: float
) -> None:
    """Every value alone: where ``_guess`` says sure, its index is ``_indices``'s. Values at
    0.5 to 4 ``delta`` from each edge (``lo`` and ``hi`` from both sides too), a few ulps
    from them, NaN, infinities; values far outside (sentinels) are sure and outside."""
    from services.worker.kernels.histogram import _delta, _guess, _indices

    delta = _delta(bins, lo, hi)
    width = (hi - lo) / bins
    k = np.arange(bins + 1, dtype=np.float64)
    offsets = np.array([0.5, 0.9, 1.1, 2.0, 4.0])
    near = lo + (k[:, None] + np.concatenate([-offsets, offsets]) * delta) * width
    edges = np.linspace(lo, hi, bins + 1)
    ulps = [np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)]
    data = np.concatenate([near.ravel(), edges, *ulps, [np.nan, np.inf, -np.inf]])
    guessed, exact = np.empty(1, np.int32), np.empty(1, np.int32)
    sure = 0
    for v in data:
        one = readonly(np.array([v]))
        _indices(one, 0, lo, hi, bins, exact)
        if _guess(one, 0, lo, hi, bins, delta, guessed) == 0:
            assert guessed[0] == exact[0], v
            sure += 1
    assert sure >= 0.4 * len(near.ravel())  # the values 1.1 to 4 delta away at least
    far = readonly(
        np.array([lo - 1e6 * (hi - lo), lo - 2 * (hi - lo), hi + 1e6 * (hi - lo), 1e308])
    )
    far_guess = np.empty(4, np.int32)
    assert _guess(far, 0, lo, hi, bins, delta, far_guess) == 0
    assert far_guess.tolist() == [bins] * 4


@pytest.mark.parametrize("segment", [2**30, 3 * 1024 + 1, 1024, 1023])
def test_histogram_counts_one_block_while_it_guesses_the_next(segment: int) -> None:
    """Unsure values at both ends of adjacent blocks, of the last whole block and in the
    last piece; blocks redone, runs of exact blocks, guesses again; any segment length."""
    from services.worker.kernels.histogram import BLOCK, EXACT_RUN, _count

    lo, hi, bins = -1.0, 2.0, 300
    edges = np.linspace(lo, hi, bins + 1)
    n = (2 * EXACT_RUN + 8) * BLOCK + 77
    data = rng.uniform(lo - 0.2, hi + 0.2, n)
    for b in (1, 2, 5, EXACT_RUN + 6, n // BLOCK - 1):
        data[[b * BLOCK, b * BLOCK + 1, b * BLOCK + BLOCK - 1]] = rng.choice(edges, 3)
    data[-3:] = [hi, lo, np.nan]
    data = readonly(data)
    for begin, end in ((0, n), (5, n - 3), (BLOCK - 1, 3 * BLOCK + 2)):
        counts = np.zeros(bins + 1, np.int64)
        _count(data, begin, end, lo, hi, counts, segment)
        assert counts[:-1].tolist() == ref.histogram(data[begin:end], bins, lo, hi)
        assert counts.sum() == end - begin


@pytest.mark.parametrize(
    "values", [[0.5], [2.0], [np.nan], [1.0], [0.0], [-np.inf], [0.25, 0.75], [0.5, np.nan]]
)
def test_histogram_of_runs_of_one_value(values: list[float]) -> None:
    from services.worker.kernels.histogram import histogram

    data = readonly(np.tile(np.array(values), 3001))  # odd lengths, runs in one bin or outside
    for chunks in (1, 2, 3):
        got = histogram(data, 4, 0.0, 1.0, chunks)
        assert got.tolist() == ref.histogram(data, 4, 0.0, 1.0)


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
