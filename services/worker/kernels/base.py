"""What every kernel module shares: the implementation signature, the declaration a module
exports (``Kernel``), the input error, and ``.npy`` arrays in and out.

Arrays in: ``load_input`` (``open_input`` where a kernel converts another dtype itself)
memory-maps a ``.npy`` dataset read-only and checks its rank and dtype before any compute,
raising ``KernelInputError`` with a message meant for the user (the worker fails the job
with it, not retried). Every input reaches a jitted function as a
read-only, C-contiguous, native-endian array, so each kernel has one compiled signature, the
one its ``warm`` function compiles (or loads from the on-disk cache).

Arrays out: ``output_array`` hands out a writable memory map of a temporary file beside the
destination and, when the block ends without an exception, flushes it, ``fsync``s it and
renames it into place (``os.replace``): a reader never sees half an output, and a killed
attempt leaves only its temporary file (``temp_path``), which the worker removes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numpy.lib.format import open_memmap

from services.worker.protocol import temp_path

Paths = Mapping[str, str]


class Impl(Protocol):
    """A kernel implementation: validated params, input and output names mapped to local
    file paths, and the number of threads it may use. Returns the job's JSON result."""

    def __call__(
        self, params: dict[str, Any], inputs: Paths, outputs: Paths, *, threads: int = 1
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Kernel:
    """What a kernel module declares: its CPU implementation, a function that compiles (or
    loads from the cache) every jitted function it uses, and the module holding its CUDA
    version (``run_cuda`` and ``warm_cuda``), imported only where CUDA is usable."""

    name: str
    cpu: Impl
    warm: Callable[[], None]
    cuda: str | None = None


class KernelInputError(Exception):
    """The job's inputs or params cannot run (shape, dtype, missing dataset): the job fails
    with this message, before any compute, and is not retried."""


def describe(arr: np.ndarray[Any, Any]) -> str:
    return f"a {arr.ndim}-D {arr.dtype} array of shape {tuple(arr.shape)}"


def _open(name: str, path: str) -> np.ndarray[Any, Any]:
    try:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # some arrays cannot be memory-mapped (empty ones): read them
            arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise KernelInputError(f"input {name!r}: dataset not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise KernelInputError(f"input {name!r} is not a readable .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise KernelInputError(f"input {name!r} is not a .npy array (an .npz archive?)")
    return arr


def open_input(
    inputs: Paths, name: str, *, ndim: int, kinds: str = "f", what: str = "float64"
) -> np.ndarray[Any, Any]:
    """The input ``name`` as it is stored (memory-mapped, read-only), checked: rank
    ``ndim`` and a dtype of ``kinds`` (``"f"``: float64 only; ``"fiu"``: any integer too);
    ``what`` names them in the error. A kernel that takes another dtype than float64
    converts it piece by piece (``histogram``), never the whole input at once."""
    if name not in inputs:
        raise KernelInputError(f"input {name!r} is missing")
    arr = _open(name, inputs[name])
    ok_kind = arr.dtype.kind in kinds and (arr.dtype.kind != "f" or arr.dtype.itemsize == 8)
    if arr.ndim != ndim or not ok_kind:
        raise KernelInputError(
            f"input {name!r} must be a {ndim}-D {what} array, not {describe(arr)}"
        )
    return arr


def load_input(
    inputs: Paths, name: str, *, ndim: int, kinds: str = "f", what: str = "float64"
) -> np.ndarray[Any, Any]:
    """The input ``name`` (``open_input``) as a read-only, C-contiguous float64 array: the
    file's own memory, or a float64 copy of the whole input when it is stored otherwise
    (byte-swapped, Fortran order, or an integer dtype of ``kinds``). A kernel that accepts
    integers uses ``open_input`` instead and converts piece by piece."""
    arr = open_input(inputs, name, ndim=ndim, kinds=kinds, what=what)
    if arr.dtype != np.float64 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float64)  # a copy: integer, swapped or F order
    arr = arr.view(np.ndarray)  # a plain array over the same memory, not a memmap subclass
    arr.flags.writeable = False
    return arr


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def output_array(
    outputs: Paths, name: str, shape: tuple[int, ...], dtype: Any = np.float64
) -> Iterator[np.ndarray[Any, Any]]:
    """A writable array that becomes the ``.npy`` output ``name`` when the block succeeds."""
    if name not in outputs:
        raise KernelInputError(f"output {name!r} is missing")
    final = Path(outputs[name])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, os.getpid())
    try:
        if int(np.prod(shape)) == 0:  # an empty array cannot be memory-mapped
            arr: np.ndarray[Any, Any] = np.empty(shape, dtype)
            yield arr
            with open(tmp, "wb") as f:
                np.save(f, arr)
        else:
            mm = open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            yield mm.view(np.ndarray)
            mm.flush()
            del mm
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def readonly(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``arr`` marked read-only, as inputs reach the jitted functions (for warmers and tests)."""
    arr.flags.writeable = False
    return arr


@intrinsic
def wide_vectors(typingctx: Any) -> Any:
    """Call at the top of a jitted function (or a ``prange`` body, which numba compiles as
    a function of its own) whose loops should use the widest vector registers the CPU has.
    LLVM's tuning for Intel CPUs with AVX-512 (Skylake-X to Sapphire Rapids) prefers 256-bit
    vectors, so a loop runs 4 float64 lanes there where dgemm (and Zen 4) runs 8: this sets
    the function's ``prefer-vector-width`` and ``min-legal-vector-width`` to 512 bits, as
    clang's ``-mprefer-vector-width=512`` does. Without AVX-512 it changes nothing."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        attributes = builder.function.attributes
        # string attributes: llvmlite's ``add`` accepts only its list of keywords
        set.add(attributes, '"prefer-vector-width"="512"')
        set.add(attributes, '"min-legal-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def arguments_do_not_alias(typingctx: Any) -> Any:
    """Call in a jitted function whose array arguments never share memory that one of them
    writes: marks the function's pointer arguments ``noalias`` (numba's own ``noalias``
    flag, which ``njit`` does not expose), so LLVM vectorises a loop that reads some arrays
    and writes others without comparing their addresses at run time (it gives up beyond a
    few arrays; LLVM keeps the promise as alias metadata when it inlines the function)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        for arg in builder.function.args:
            # the arrays' data pointers only: not their ``i8*`` meminfo (several views of one
            # array share it, and its reference count is written through each)
            if isinstance(arg.type, ir.PointerType) and arg.type.pointee != ir.IntType(8):
                arg.add_attribute("noalias")
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def prefetch(typingctx: Any, arr: Any, index: Any) -> Any:
    """Ask the CPU to bring ``arr[index]``'s cache line into the L2 cache (``prefetcht1``
    on x86; an index beyond the array is harmless: a prefetch never faults). For a loop that
    computes on data already in the cache while the next data is read from memory: the
    hardware prefetchers follow the loads a loop makes, and a loop that makes none (a pass
    over a buffer in the L1 cache) leaves the memory idle meanwhile."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        offset = context.cast(builder, args[1], sig.args[1], types.intp)
        address = builder.bitcast(builder.gep(ary.data, [offset]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read (0), locality 2 (x86: prefetcht1, into L2), data cache (1)
        builder.call(fn, [address, i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return types.none(arr, index), codegen
