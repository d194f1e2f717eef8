"""histogram: ``numpy.histogram(data, bins, range)[0]`` over a 1-D array.

The bin of each value follows NumPy's equal-bins algorithm: values outside ``[lo, hi]`` (and
NaN) are dropped, ``hi`` itself falls in the last bin, and a first guess is corrected by one
against the edges, which are ``np.linspace(lo, hi, bins + 1)``: ``k*step + lo`` computed as
linspace does (so they need not be looked up), ``hi`` for the last. The first guess here
multiplies by ``bins / (hi - lo)`` where NumPy divides: it is never off by more than one
either (the params model refuses ranges where that factor is not finite), so after the
correction every value is in the bin whose edges hold it, as in NumPy.

Per block of 2,048 values, a branch-free pass computes the bin indices in float64 (it
vectorises; the integer is read from the mantissa bits, see ``SHIFT``) and a second pass
counts them. Each thread counts into bins of its own (privatised), plus a slot
for the values outside, and the bins are summed at the end.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from services.worker.kernels.base import Kernel, KernelInputError, Paths, load_input, readonly

PRIVATE_BINS_LIMIT = 2**25  # per-thread bins kept below 256 MiB in all
BLOCK = 2048
# Adding 2**52 + 2**51 to a small non-negative integer-valued double leaves the integer in the
# low bits of its mantissa: the bits, less SHIFT_BITS, are the integer (no float -> int
# conversion, which AVX2 cannot vectorise).
SHIFT = 6755399441055744.0
SHIFT_BITS = np.uint64(0x4338000000000000)


@numba.njit(cache=True, nogil=True)
def _indices(data: Any, start: int, lo: float, hi: float, bins: int, out: Any) -> None:
    """``out[i]``: NumPy's bin of ``data[start + i]`` (``bins`` when it is outside or NaN) plus
    ``SHIFT``, all in float64 so that the loop vectorises. ``data`` is indexed rather than
    sliced: a slice of a read-only array (inputs are read-only memory maps) is typed with
    any layout, and the loop over it does not vectorise."""
    step = (hi - lo) / bins  # np.linspace's step: edge k is k*step + lo
    scale = bins / (hi - lo)
    last = np.float64(bins - 1)
    outside = np.float64(bins)
    for i in range(out.shape[0]):
        v = data[start + i]
        inside = (v >= lo) & (v <= hi)
        k = min(np.floor((v - lo) * scale if inside else 0.0), last)
        k -= 1.0 if v < k * step + lo else 0.0
        upper = hi if k == last else (k + 1.0) * step + lo
        k += 1.0 if (v >= upper) & (k != last) else 0.0
        out[i] = (k if inside else outside) + SHIFT


@numba.njit(cache=True, nogil=True)
def _count(data: Any, begin: int, end: int, lo: float, hi: float, counts: Any) -> None:
    """Add the bins of ``data[begin:end]`` to ``counts`` (the last slot: values outside)."""
    buf = np.empty(BLOCK, np.float64)
    bits = buf.view(np.uint64)  # unsigned: the index needs no wrap-around check
    for start in range(begin, end, BLOCK):
        out = buf[: min(BLOCK, end - start)]
        _indices(data, start, lo, hi, counts.shape[0] - 1, out)
        for i in range(out.shape[0]):
            counts[bits[i] - SHIFT_BITS] += 1


@numba.njit(cache=True, parallel=True, nogil=True)
def histogram(data: Any, bins: int, lo: float, hi: float, chunks: int) -> Any:
    n = data.shape[0]
    private = np.zeros((chunks, bins + 1), np.int64)  # the last slot: values outside
    step = (n + chunks - 1) // chunks
    for c in prange(chunks):
        _count(data, c * step, min(n, (c + 1) * step), lo, hi, private[c])
    return private.sum(axis=0)[:-1]


def edges(bins: int, lo: float, hi: float) -> np.ndarray[Any, Any]:
    """The bin edges exactly as ``numpy.histogram`` computes them for float64 data; like it,
    refuses a range too narrow for ``bins`` increasing edges."""
    e = np.linspace(lo, hi, bins + 1, endpoint=True, dtype=np.float64)
    if np.any(e[:-1] >= e[1:]):
        raise KernelInputError(f"range [{lo!r}, {hi!r}] is too narrow for {bins} bins")
    return readonly(e)


def load(inputs: Paths) -> np.ndarray[Any, Any]:
    return load_input(inputs, "data", ndim=1, kinds="fiu", what="float64 or integer")


def run_cpu(
    params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
) -> dict[str, Any]:
    data = load(inputs)
    bins = int(params["bins"])
    lo, hi = (float(v) for v in params["range"])
    edges(bins, lo, hi)  # refuses what NumPy refuses
    chunks = max(1, min(threads, PRIVATE_BINS_LIMIT // bins))
    counts = histogram(data, bins, lo, hi, chunks)
    return {"counts": counts.tolist()}


def warm() -> None:
    histogram(readonly(np.ones(3)), 2, 0.0, 2.0, 1)


KERNEL = Kernel("histogram", run_cpu, warm, cuda="services.worker.kernels.histogram_cuda")
