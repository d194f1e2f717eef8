"""Datasets (``client.datasets``): bytes, files and NumPy arrays up and down, streamed.

An upload is a PUT: repeating it writes the same bytes again, so it is retried like any
idempotent request, its body made anew for each try (a file is read again from its start).
A download is retried until its answer starts; a connection lost in the middle of the bytes
is raised (``httpx.TransportError``), and ``get_file`` then leaves no partial file behind."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratus_client import _calls
from stratus_client._npy import CHUNK, NpyReader, npy_parts
from stratus_client.models import Dataset

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from stratus_client.aio import AsyncClient
    from stratus_client.client import Client

PathLike = str | os.PathLike[str]
# Called with the bytes moved so far: for a progress display.
Progress = Callable[[int], None]


def _sized(call: _calls.Call[Dataset], size: int) -> _calls.Call[Dataset]:
    """The upload with its length declared, so the service can refuse it (quota, limits)
    before reading it."""
    return dataclasses.replace(call, headers={**call.headers, "Content-Length": str(size)})


def _file_chunks(path: PathLike) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _counted(chunks: Iterator[bytes], progress: Progress | None) -> Iterator[bytes]:
    """``chunks``, with ``progress`` told the bytes taken so far (from 0)."""
    if progress is None:
        yield from chunks
        return
    done = 0
    progress(done)
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress(done)


async def _counted_async(
    chunks: AsyncIterator[bytes], progress: Progress | None
) -> AsyncIterator[bytes]:
    done = 0
    if progress is not None:
        progress(done)
    async for chunk in chunks:
        yield chunk
        done += len(chunk)
        if progress is not None:
            progress(done)


class _Temp:
    """A temporary file beside ``path`` that becomes ``path`` only when complete."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        self.file = os.fdopen(fd, "wb")
        self.name = name

    def commit(self) -> None:
        self.file.close()
        os.replace(self.name, self.path)

    def discard(self) -> None:
        self.file.close()
        Path(self.name).unlink(missing_ok=True)


class Datasets:
    """The dataset methods of a ``Client``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def put_bytes(self, name: str, data: bytes, *, tier: str | None = None) -> Dataset:
        """Store ``data`` as dataset ``name`` (on ``tier``, default the service's)."""
        return self._client._run_with(_calls.put_dataset(name, tier), lambda: data)

    def put_file(
        self,
        name: str,
        path: PathLike,
        *,
        tier: str | None = None,
        progress: Progress | None = None,
    ) -> Dataset:
        """Store the file at ``path``, read and sent in chunks; ``progress(bytes_sent)``
        after each (from 0 again when the upload is tried again)."""
        call = _sized(_calls.put_dataset(name, tier), os.path.getsize(path))
        return self._client._run_with(call, lambda: _counted(_file_chunks(path), progress))

    def put_array(self, name: str, array: npt.ArrayLike, *, tier: str | None = None) -> Dataset:
        """Store a NumPy array as a ``.npy`` dataset, sent from the array's own memory."""
        size, _ = npy_parts(array)
        call = _sized(_calls.put_dataset(name, tier), size)
        return self._client._run_with(call, lambda: npy_parts(array)[1])

    def _chunks(self, name: str) -> Iterator[bytes]:
        response = self._client._send(_calls.get_dataset(name), stream=True)
        try:
            yield from response.iter_bytes(CHUNK)
        finally:
            response.close()

    def get_bytes(self, name: str) -> bytes:
        return b"".join(self._chunks(name))

    def get_file(self, name: str, path: PathLike, *, progress: Progress | None = None) -> Path:
        """Write the dataset to ``path`` (replaced only once every byte has arrived);
        ``progress(bytes_received)`` after each chunk."""
        temp = _Temp(path)
        try:
            for chunk in _counted(self._chunks(name), progress):
                temp.file.write(chunk)
        except BaseException:
            temp.discard()
            raise
        temp.commit()
        return temp.path

    def get_array(self, name: str) -> np.ndarray[Any, Any]:
        """A ``.npy`` dataset as a NumPy array, filled as its bytes arrive."""
        reader = NpyReader()
        for chunk in self._chunks(name):
            reader.feed(chunk)
        return reader.result()

    def meta(self, name: str) -> Dataset:
        return self._client._run(_calls.dataset_meta(name))

    def list(self, *, prefix: str | None = None) -> Iterator[Dataset]:
        """The tenant's datasets (names starting with ``prefix``), every page."""
        filters = _calls.query(prefix=prefix or None)
        for item in self._client._items("/v1/datasets", filters):
            yield Dataset.model_validate(item)

    def delete(self, name: str) -> None:
        self._client._run(_calls.delete_dataset(name))


async def _file_chunks_async(path: PathLike) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


async def _iterate(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class AsyncDatasets:
    """The dataset methods of an ``AsyncClient``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def put_bytes(self, name: str, data: bytes, *, tier: str | None = None) -> Dataset:
        return await self._client._run_with(_calls.put_dataset(name, tier), lambda: data)

    async def put_file(
        self,
        name: str,
        path: PathLike,
        *,
        tier: str | None = None,
        progress: Progress | None = None,
    ) -> Dataset:
        size = await asyncio.to_thread(os.path.getsize, path)
        call = _sized(_calls.put_dataset(name, tier), size)
        return await self._client._run_with(
            call, lambda: _counted_async(_file_chunks_async(path), progress)
        )

    async def put_array(
        self, name: str, array: npt.ArrayLike, *, tier: str | None = None
    ) -> Dataset:
        size, _ = npy_parts(array)
        call = _sized(_calls.put_dataset(name, tier), size)
        return await self._client._run_with(call, lambda: _iterate(npy_parts(array)[1]))

    async def _chunks(self, name: str) -> AsyncIterator[bytes]:
        response = await self._client._send(_calls.get_dataset(name), stream=True)
        try:
            async for chunk in response.aiter_bytes(CHUNK):
                yield chunk
        finally:
            await response.aclose()

    async def get_bytes(self, name: str) -> bytes:
        return b"".join([chunk async for chunk in self._chunks(name)])

    async def get_file(
        self, name: str, path: PathLike, *, progress: Progress | None = None
    ) -> Path:
        temp = await asyncio.to_thread(_Temp, path)
        try:
            async for chunk in _counted_async(self._chunks(name), progress):
                await asyncio.to_thread(temp.file.write, chunk)
        except BaseException:
            await asyncio.to_thread(temp.discard)
            raise
        await asyncio.to_thread(temp.commit)
        return temp.path

    async def get_array(self, name: str) -> np.ndarray[Any, Any]:
        reader = NpyReader()
        async for chunk in self._chunks(name):
            reader.feed(chunk)
        return reader.result()

    async def meta(self, name: str) -> Dataset:
        return await self._client._run(_calls.dataset_meta(name))

    async def list(self, *, prefix: str | None = None) -> AsyncIterator[Dataset]:
        filters = _calls.query(prefix=prefix or None)
        async for item in self._client._items("/v1/datasets", filters):
            yield Dataset.model_validate(item)

    async def delete(self, name: str) -> None:
        await self._client._run(_calls.delete_dataset(name))
