"""NumPy arrays to and from ``.npy`` bytes, in chunks: an upload never holds a second copy of
the array, and a download is written straight into the array it returns.

NumPy is optional (``pip install stratus-client[numpy]``): it is imported only here, and only
when an array method is called."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

CHUNK = 1 << 20


def numpy() -> Any:
    try:
        import numpy as np
    except ImportError:
        raise ImportError(
            "put_array and get_array need NumPy: pip install 'stratus-client[numpy]'"
        ) from None
    return np


def npy_parts(array: npt.ArrayLike) -> tuple[int, Iterator[bytes]]:
    """The ``.npy`` file of ``array``: its length, and its bytes in chunks (the header, then
    views of the array's memory). Object arrays are refused: their file would hold pickles."""
    np = numpy()
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise ValueError("an object array has no .npy form without pickles")
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(arr))
    head = header.getvalue()
    data = arr.reshape(-1).data.cast("B") if arr.size else memoryview(b"")

    def chunks() -> Iterator[bytes]:
        yield head
        for at in range(0, len(data), CHUNK):
            yield bytes(data[at : at + CHUNK])

    return len(head) + len(data), chunks()


class NpyReader:
    """Builds the array of a ``.npy`` file fed to it in chunks of any size."""

    def __init__(self) -> None:
        self._np = numpy()
        self._head = bytearray()
        self._array: np.ndarray[Any, Any] | None = None
        self._view: memoryview | None = None
        self._filled = 0

    def feed(self, chunk: bytes) -> None:
        if self._view is None:
            self._head += chunk
            self._try_header()
            return
        self._copy(chunk)

    def _try_header(self) -> None:
        np = self._np
        if len(self._head) < 12:
            return
        major = self._head[6]
        size_bytes = 2 if major == 1 else 4
        length = 8 + size_bytes + int.from_bytes(self._head[8 : 8 + size_bytes], "little")
        if len(self._head) < length:
            return
        fp = io.BytesIO(bytes(self._head[:length]))
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy version {version} is not read")
        if dtype.hasobject:
            raise ValueError("the dataset is an object array (pickles): not read")
        self._array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        self._view = self._array.reshape(-1, order="A").data.cast("B")
        rest, self._head = bytes(self._head[length:]), bytearray()
        self._copy(rest)

    def _copy(self, chunk: bytes) -> None:
        assert self._view is not None
        end = self._filled + len(chunk)
        if end > len(self._view):
            raise ValueError("the .npy file is longer than its header says")
        self._view[self._filled : end] = chunk
        self._filled = end

    def result(self) -> np.ndarray[Any, Any]:
        if self._array is None or self._view is None or self._filled != len(self._view):
            raise ValueError("the .npy file ended early")
        return self._array
