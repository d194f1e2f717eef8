"""histogram: ``numpy.histogram(data, bins, range)[0]`` over a 1-D array.

The bin of each value follows NumPy's equal-bins algorithm: values outside ``[lo, hi]`` (and
NaN) are dropped, ``hi`` itself falls in the last bin, and a first guess is corrected by one
against the edges, which are ``np.linspace(lo, hi, bins + 1)``: ``k*step + lo`` computed as
linspace does (so they need not be looked up), ``hi`` for the last. The first guess here
multiplies by ``bins / (hi - lo)`` where NumPy divides: it is never off by more than one
either (the params model refuses ranges where that factor is not finite), so after the
correction every value is in the bin whose edges hold it, as in NumPy.

Per block of ``BLOCK`` values, a branch-free pass computes the bin indices in float64 and
converts them to int32 at the end (it vectorises: AVX2 converts float64 to int32 in vectors,
only float64 to int64 it cannot; a bin below ``2**31`` is exact in both), and a second pass
counts them. The input is indexed, not sliced (a slice of a read-only memory map is typed
with any layout and did not vectorise), and with unsigned indices: with a signed one
(``start + i``) numba adds the wrap-around of negative indices, and LLVM made the load a
gather on AVX-512 (the index pass was 3x slower).

The first pass (``_first_guess``, ``_guess``) is the first guess alone, ``t = (v - lo) *
scale`` and its floor: it is the bin whenever ``t`` is more than ``delta`` from an integer
(``_delta``). Otherwise the block is computed again with the corrections against the edges
(``_indices``), and the next ``EXACT_RUN`` blocks directly (data on the edges: integers, a
constant). Why ``delta`` suffices, with ``u = 2**-53``, ``W = hi - lo``, ``M = max(|lo|,
|hi|)``, in units of bins (``x -> (x - lo) * bins / W``, exact in real numbers): ``t`` is
within ``4u * bins`` of ``v``'s exact position (four roundings: ``hi - lo``, ``bins / (hi -
lo)``, ``v - lo``, the product) and the edge ``k*step + lo`` within ``u * bins * (3 + M/W)``
of ``k`` (three roundings in ``step`` and ``k*step``, one in the sum, of size at most ``M``);
``delta = u * bins * (16 + 2M/W)`` is more than twice the sum, so a value whose ``t`` has
``k + delta <= t <= k + 1 - delta`` lies between edges ``k`` and ``k + 1``: NumPy's bin
(``t - floor(t)`` is exact; the test ``|t - floor(t) - 0.5| > 0.5 - delta`` rounds by at
most ``u``, far less than the factor two). Edge 0 is ``lo`` and edge ``bins`` is ``hi``
exactly, so the same bound tells the values outside: ``t < -delta`` or ``t > bins + delta``.
``t`` is clamped to ``[-0.5, bins + 0.5]`` (NaN to -0.5) before its floor, which is then -1
or ``bins`` for them, both ``bins`` (outside) as an unsigned minimum: no comparisons with
``lo`` and ``hi`` nor blend (compiled for Zen 3, AVX2: the vector loop of ``_guess`` was 39
instructions per 8 values with them, 33 without), and a value far outside (a sentinel, an
infinity) is never unsure.

The two passes run in one loop (``_guess_and_count``): while the block before is counted,
``STEP`` values at a time, the next block is guessed, ``STEP`` values at a time, so the core
computes the guesses (vector arithmetic) while the count's loads and stores (one per value)
are under way, where it did one, then the other. On one core of Zen 3 (AVX2; CPU time, the
two interleaved on a busy host, load 4-7), data in memory: 1.11-1.17 → 0.96-1.03 ns per
value (medians), 0.99 → 0.70 (best runs); data in the L2 cache: 0.96 → 0.73. A block with an
unsure guess is computed again before it is counted, and the blocks computed exactly
(``EXACT_RUN``) are counted alone.

The index passes ask for 512-bit vectors (``wide_vectors``: LLVM's tuning for Intel's AVX-512
CPUs prefers 256-bit ones: code tuned for it took 0.83 ns per value on one core, 0.68 with
them).

Each thread counts its chunk into ``LANES`` sub-histograms of int32, consecutive values into
different lanes (a run of values in one bin, or outside, is then not one chain of dependent
increments), small enough to stay in the L1 cache beside the block, the indices read two at
a time (one 64-bit load for two int32: on Intel the count is bound by its loads, not its
additions: 0.51 → 0.30 ns per value on one core of a Xeon, indices in the cache). While it
counts a block, the count asks for the data ``AHEAD`` values beyond the block being guessed
(``base.prefetch``, one cache line per 8 values): the index pass reads the data in bursts
and the hardware prefetchers follow only the loads a loop makes, so without it the memory
idled while the count ran (1.44 → 0.80 ns per value on one core of that Xeon, data in
memory, when the passes ran one after the other). Every
``SEGMENT`` values (before an int32 could overflow) the lanes are added into the thread's
int64 counts, and the threads' counts are summed at the end. Bins beyond
``LANE_BINS_LIMIT`` miss the L1 cache anyway: they are counted directly into the int64
counts. Each thread's counts have a slot for the values outside.

An input of another dtype than native float64 (integers, byte-swapped floats) is converted
``CONVERT_BLOCK`` values at a time into one reused float64 buffer, each block counted as it
is converted: the job's memory does not grow with its input (a float64 copy of an int8
input would be eight times its size).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker.kernels.base import (
    Kernel,
    KernelInputError,
    Paths,
    arguments_do_not_alias,
    open_input,
    prefetch,
    readonly,
    wide_vectors,
)

PRIVATE_BINS_LIMIT = 2**25  # per-thread bins kept below 256 MiB in all
BLOCK = 1024  # values whose indices are computed at once (4 KiB of int32)
LANES = 2  # int32 sub-histograms per thread (c0 and c1 in _count)
LANE_BINS_LIMIT = 2048  # at most this many bins (+ outside) in lanes: 2 x 8 KiB
SEGMENT = 2**30  # values counted into the lanes before they are added up (< 2**31 each)
CONVERT_BLOCK = 2**20  # values of another dtype converted at once (8 MiB of float64)
EXACT_RUN = 15  # blocks computed with the corrections after a block where a guess was unsure
AHEAD = 2 * BLOCK  # values ahead of the block being guessed that the count asks the L2 for
STEP = 16  # values guessed, then values counted, in turn (_guess_and_count)
LOW = np.uint64(0xFFFFFFFF)  # the first int32 index of a pair read as one uint64


@numba.njit(cache=True, nogil=True)
def _indices(data: Any, start: int, lo: float, hi: float, bins: int, out: Any) -> None:
    """``out[i]`` (int32): NumPy's bin of ``data[start + i]`` (``bins`` when it is outside or
    NaN), computed in float64 and converted at the end, so that the loop vectorises."""
    wide_vectors()
    step = (hi - lo) / bins  # np.linspace's step: edge k is k*step + lo
    scale = bins / (hi - lo)
    last = np.float64(bins - 1)
    outside = np.float64(bins)
    for i in range(out.shape[0]):
        v = data[np.uint64(start + i)]  # unsigned: no wrap-around, no gather
        inside = (v >= lo) & (v <= hi)
        k = min(np.floor((v - lo) * scale if inside else 0.0), last)
        k -= 1.0 if v < k * step + lo else 0.0
        upper = hi if k == last else (k + 1.0) * step + lo
        k += 1.0 if (v >= upper) & (k != last) else 0.0
        out[i] = np.int32(k if inside else outside)


@numba.njit(cache=True, nogil=True)
def _first_guess(v: float, lo: float, scale: float, top: float, near: float, bins: Any) -> Any:
    """The first guess of ``v``'s bin (``bins``, a uint32: outside or NaN) and whether it is
    unsure: ``t = (v - lo) * scale`` clamped to ``[-0.5, top]`` (NaN to -0.5), its floor
    converted and limited to ``bins`` as unsigned (-1, below, becomes ``bins`` too), unsure
    when ``t`` is within ``0.5 - near`` (``delta``) of an integer. Branch-free: it vectorises."""
    t = (v - lo) * scale
    t = t if t > -0.5 else -0.5  # NaN too
    t = t if t < top else top
    k = np.floor(t)
    return min(np.uint32(np.int32(k)), bins), abs(t - k - 0.5) > near


@numba.njit(cache=True, nogil=True)
def _guess(data: Any, start: int, lo: float, hi: float, bins: int, delta: float, out: Any) -> int:
    """``out[i]`` as ``_indices`` gives it for every value whose first guess is more than
    ``delta`` from a bin edge; returns how many were closer (``out`` is then wrong for
    them). Values outside ``[lo, hi]`` count only within ``delta`` of ``lo`` or ``hi``."""
    wide_vectors()
    scale = bins / (hi - lo)
    top, near, nb = bins + 0.5, 0.5 - delta, np.uint32(bins)
    index = out.view(np.uint32)
    unsure = 0
    for i in range(out.shape[0]):
        index[i], u = _first_guess(data[np.uint64(start + i)], lo, scale, top, near, nb)
        unsure += 1 if u else 0
    return unsure


@numba.njit(cache=True, nogil=True)
def _delta(bins: int, lo: float, hi: float) -> float:
    """How close (in bins) to an edge a first guess may be wrong; see the module docstring."""
    return 2.0**-53 * bins * (16.0 + 2.0 * max(abs(lo), abs(hi)) / (hi - lo))


@numba.njit(cache=True, nogil=True)
def _block(
    data: Any, start: int, lo: float, hi: float, bins: int, delta: float, exact: int, out: Any
) -> int:
    """``out``: the indices of the block at ``start`` (``_guess``, or ``_indices`` where a
    guess was unsure or while ``exact`` > 0); returns ``exact`` for the next block."""
    if exact > 0:
        _indices(data, start, lo, hi, bins, out)
        return exact - 1
    if _guess(data, start, lo, hi, bins, delta, out):
        _indices(data, start, lo, hi, bins, out)
        return EXACT_RUN
    return 0


@numba.njit(cache=True, nogil=True)
def _guess_and_count(
    data: Any, start: int, lo: float, hi: float, delta: float, nxt: Any, cur: Any, c0: Any, c1: Any
) -> bool:
    """Two passes in one loop: the first guesses of the block at ``start`` into ``nxt`` (as
    ``_guess``: returns whether one was unsure), and the count of the indices in ``cur``
    (the block before it) into the lanes ``c0`` and ``c1``, ``STEP`` values of each in
    turn, so that the core computes the one while it waits on the other's loads and stores;
    asks the L2 for the data ``AHEAD`` values beyond the block being guessed."""
    arguments_do_not_alias()  # nothing to check at run time before each step's vector loop
    wide_vectors()
    bins = c0.shape[0] - 1
    scale = bins / (hi - lo)
    top, near, nb = bins + 0.5, 0.5 - delta, np.uint32(bins)
    index = nxt.view(np.uint32)
    pairs = cur.view(np.uint64)
    unsure = False
    for q in range(0, BLOCK, STEP):
        for h in range(STEP):  # vectorised
            index[q + h], u = _first_guess(data[np.uint64(start + q + h)], lo, scale, top, near, nb)
            unsure |= u
        for g in range(q, q + STEP, 8):  # 8 values: one cache line of the data
            prefetch(data, np.uint64(start + AHEAD + g))
            for h in range(g // 2, g // 2 + 4):
                pair = pairs[h]
                c0[pair & LOW] += 1
                c1[pair >> np.uint64(32)] += 1
    return unsure


@numba.njit(cache=True, nogil=True)
def _count_block(data: Any, start: int, cur: Any, c0: Any, c1: Any) -> None:
    """The count of ``_guess_and_count`` alone, for the block at ``start``."""
    pairs = cur.view(np.uint64)
    for g in range(0, BLOCK, 8):
        prefetch(data, np.uint64(start + AHEAD + g))
        for h in range(g // 2, g // 2 + 4):
            pair = pairs[h]
            c0[pair & LOW] += 1
            c1[pair >> np.uint64(32)] += 1


@numba.njit(cache=True, nogil=True)
def _count(
    data: Any, begin: int, end: int, lo: float, hi: float, counts: Any, segment: int
) -> None:
    """Add the bins of ``data[begin:end]`` to ``counts`` (int64; the last slot: values
    outside), through int32 lanes added up every ``segment`` values."""
    bins = counts.shape[0] - 1
    delta = _delta(bins, lo, hi)
    exact = 0
    index = np.empty(BLOCK, np.int32)
    single = index.view(np.uint32)  # unsigned: the index needs no wrap-around check
    pairs = index.view(np.uint64)  # two indices per load
    if counts.shape[0] > LANE_BINS_LIMIT:
        for start in range(begin, end, BLOCK):
            m = min(BLOCK, end - start)
            exact = _block(data, start, lo, hi, bins, delta, exact, index[:m])
            if m == BLOCK:
                for q in range(BLOCK // 8):
                    prefetch(data, np.uint64(start + AHEAD + 8 * q))
                    for h in range(8):
                        counts[single[8 * q + h]] += 1
            else:
                for i in range(m):
                    counts[single[i]] += 1
        return
    other = np.empty(BLOCK, np.int32)
    lanes = np.zeros((LANES, counts.shape[0]), np.int32)
    c0, c1 = lanes[0], lanes[1]
    for first in range(begin, end, segment):
        last = min(end, first + segment)
        full = (last - first) // BLOCK  # whole blocks: each guessed while the one before counts
        cur, nxt = index, other
        if full > 0:
            exact = _block(data, first, lo, hi, bins, delta, exact, cur)
        for j in range(full):
            start = first + j * BLOCK
            if j + 1 == full:
                _count_block(data, start, cur, c0, c1)
            elif exact > 0:
                _count_block(data, start, cur, c0, c1)
                exact = _block(data, start + BLOCK, lo, hi, bins, delta, exact, nxt)
            elif _guess_and_count(data, start + BLOCK, lo, hi, delta, nxt, cur, c0, c1):
                _indices(data, start + BLOCK, lo, hi, bins, nxt)  # the counts of cur stand
                exact = EXACT_RUN
            cur, nxt = nxt, cur
        start = first + full * BLOCK
        m = last - start
        if m > 0:
            exact = _block(data, start, lo, hi, bins, delta, exact, index[:m])
            for h in range(m // 2):  # from 0 by 1: LLVM knows the index is not negative
                pair = pairs[h]
                c0[pair & LOW] += 1
                c1[pair >> np.uint64(32)] += 1
            if m % 2:
                c0[single[m - 1]] += 1
        for b in range(counts.shape[0]):
            counts[b] += np.int64(c0[b]) + np.int64(c1[b])
        lanes[:] = 0


@numba.njit(cache=True, parallel=True, nogil=True)
def count_into(data: Any, lo: float, hi: float, private: Any) -> None:
    """Add the bins of ``data`` to ``private`` (one row of counts per thread's chunk; the
    last slot of each: values outside)."""
    n = data.shape[0]
    chunks = private.shape[0]
    step = (n + chunks - 1) // chunks
    for c in prange(chunks):
        _count(data, c * step, min(n, (c + 1) * step), lo, hi, private[c], SEGMENT)


def histogram(data: Any, bins: int, lo: float, hi: float, chunks: int) -> Any:
    """The counts of float64 ``data``, its work cut into ``chunks``."""
    private = np.zeros((chunks, bins + 1), np.int64)
    count_into(data, lo, hi, private)
    return private.sum(axis=0)[:-1]


def converted_blocks(data: np.ndarray[Any, Any]) -> Iterator[np.ndarray[Any, Any]]:
    """``data`` as read-only float64 blocks: itself if it is native float64, else its
    ``CONVERT_BLOCK``-value pieces converted one after another into one buffer (none for
    an empty input)."""
    if data.shape[0] == 0:
        return
    if data.dtype == np.float64 and data.dtype.isnative and data.flags.c_contiguous:
        yield readonly(data.view(np.ndarray))
        return
    buffer = np.empty(min(CONVERT_BLOCK, data.shape[0]), np.float64)
    for start in range(0, data.shape[0], CONVERT_BLOCK):
        piece = data[start : start + CONVERT_BLOCK]
        block = buffer[: piece.shape[0]]
        block[...] = piece  # as ``astype(np.float64)`` converts
        yield readonly(block.view())


def counts_of(data: np.ndarray[Any, Any], bins: int, lo: float, hi: float, chunks: int) -> Any:
    """``histogram`` of ``data`` of any accepted dtype, converted block by block."""
    private = np.zeros((chunks, bins + 1), np.int64)
    for block in converted_blocks(data):
        count_into(block, lo, hi, private)
    return private.sum(axis=0)[:-1]


def edges(bins: int, lo: float, hi: float) -> np.ndarray[Any, Any]:
    """The bin edges exactly as ``numpy.histogram`` computes them for float64 data; like it,
    refuses a range too narrow for ``bins`` increasing edges."""
    e = np.linspace(lo, hi, bins + 1, endpoint=True, dtype=np.float64)
    if np.any(e[:-1] >= e[1:]):
        raise KernelInputError(f"range [{lo!r}, {hi!r}] is too narrow for {bins} bins")
    return readonly(e)


def open_data(inputs: Paths) -> np.ndarray[Any, Any]:
    """The data as stored (``converted_blocks`` reads it as float64)."""
    return open_input(inputs, "data", ndim=1, kinds="fiu", what="float64 or integer")


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    data = open_data(inputs)
    bins = int(params["bins"])
    lo, hi = (float(v) for v in params["range"])
    edges(bins, lo, hi)  # refuses what NumPy refuses
    chunks = max(1, min(threads, PRIVATE_BINS_LIMIT // bins))
    counts = counts_of(data, bins, lo, hi, chunks)
    return {"counts": counts.tolist()}


def warm() -> None:
    counts_of(readonly(np.ones(3)), 2, 0.0, 2.0, 1)


KERNEL = Kernel("histogram", run_cpu, warm, cuda="services.worker.kernels.histogram_cuda")
