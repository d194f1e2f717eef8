"""The header of a ``.npy`` file, read without loading the array (and never a pickle).

A ``.npy`` file is a magic string, a version, the header's length, the header (a Python
literal: ``descr``, ``fortran_order``, ``shape``) and then the array's bytes. The gateway
reads only the first bytes of each input (``header_end`` says how many it needs) to check a
submission against the kernel's shape rules; the worker can read the same from a local file
(``read_file_header``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

# Enough for the header numpy writes for any plain array (128 bytes, padded to 64).
FIRST_READ = 256
# numpy refuses longer headers unless the file is trusted (literal_eval of a long text).
MAX_HEADER = 10_000
TIMES = "\N{MULTIPLICATION SIGN}"
_PREAMBLE = {(1, 0): 10, (2, 0): 12}  # magic, version and the header's length field


class NpyError(ValueError):
    """Why bytes are not a usable ``.npy`` header; the text is meant for the user."""


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` file's header says, with the file's size to hold it to."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    @property
    def is_native_float64(self) -> bool:
        """Whether a kernel can use the bytes as they are (no converted copy)."""
        c_order = not self.fortran_order or self.ndim < 2
        return self.dtype == np.dtype(np.float64) and c_order

    def dims(self) -> str:
        """``3×4`` (a multiplication sign); ``4`` for a 1-D array; ``()`` for a scalar."""  # noqa: RUF002
        return TIMES.join(str(d) for d in self.shape) or "()"

    def describe(self) -> str:
        return f"a {self.ndim}-D {self.dtype} array of shape {self.dims()}"


def header_end(head: bytes) -> int:
    """Where the array's bytes start, from the file's first ``FIRST_READ`` bytes (or all of
    them, for a shorter file)."""
    if not head.startswith(npy_format.MAGIC_PREFIX) or len(head) < 10:
        raise NpyError("not a .npy file")
    version = (head[6], head[7])
    preamble = _PREAMBLE.get(version)
    if preamble is None:
        raise NpyError(f"unsupported .npy format version {version[0]}.{version[1]}")
    if len(head) < preamble:
        raise NpyError("not a .npy file: the header is cut short")
    length = int.from_bytes(head[8:preamble], "little")
    if length > MAX_HEADER:
        raise NpyError(f"the .npy header is too long ({length} bytes)")
    return preamble + length


def parse_header(head: bytes, *, file_size: int) -> ArrayHeader:
    """The header in ``head`` (at least ``header_end(head)`` bytes), checked against the size
    of the file it came from."""
    end = header_end(head)
    if len(head) < end:
        raise NpyError("not a .npy file: the header is cut short")
    fp = io.BytesIO(head[:end])
    try:
        version = npy_format.read_magic(fp)
        read = (
            npy_format.read_array_header_1_0
            if version == (1, 0)
            else npy_format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(fp, max_header_size=MAX_HEADER)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise NpyError(f"not a .npy file: its header cannot be read ({_first_line(exc)})") from None
    if any(d < 0 for d in shape):
        raise NpyError(f"the .npy header has a negative dimension: {shape}")
    header = ArrayHeader(dtype, tuple(shape), bool(fortran_order), end)
    if dtype.hasobject:
        return header  # pickled objects: their size says nothing; the kernels refuse them
    if end + header.nbytes != file_size:
        raise NpyError(
            f"the file is truncated or padded: its header declares {header.describe()} "
            f"({header.nbytes} bytes of data) but {file_size - end} bytes follow it"
        )
    return header


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def read_file_header(path: Path) -> ArrayHeader:
    """The header of a local ``.npy`` file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(FIRST_READ)
        end = header_end(head)
        if end > len(head):
            head += f.read(end - len(head))
    return parse_header(head, file_size=size)


def npy_file_bytes(shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> int:
    """The size of the ``.npy`` file numpy writes for an array of ``shape`` and ``dtype``."""
    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buf, header)
    return len(buf.getvalue()) + math.prod(shape) * dtype.itemsize
