"""The tier interface and the directory tier (fsspec's local filesystem).

A tier stores objects by key (``<tenant_id>/<name>``). Writes never show a partial object:
bytes go to an ``Upload`` (a temporary file, or an S3 multipart upload) written chunk by chunk,
in any order, and ``publish`` makes it visible atomically (rename, or multipart completion).
An ``Upload`` is plain data so that a restarted process can carry on with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import fsspec

from shared.settings import TierSettings
from shared.storage.checksum import Hasher

TEMP_DIR = ".stratus-tmp"
PUBLISH_TRIES = 5  # a folder pruned under a publish is made again this often
READ_BACK_PIECE = 256 * 1024  # verification reads fit the cache: faster than whole chunks
# copy_file_range cannot copy between these two files (another filesystem, no support)
NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


@dataclass(frozen=True)
class Upload:
    """A partial object: ``temp`` file (directory tiers) or ``upload_id`` (S3 multipart)."""

    key: str
    temp: str = ""
    upload_id: str | None = None

    @property
    def ref(self) -> str:
        """What identifies the partial object on its tier (upload id, or temporary file)."""
        return self.upload_id or self.temp

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Upload:
        return cls(str(data["key"]), str(data.get("temp", "")), data.get("upload_id"))


class Reader(Protocol):
    """An open object being read from start to end (one consistent version)."""

    async def read(self, n: int) -> bytes: ...

    async def close(self) -> None: ...


class Tier(ABC):
    """One storage tier. Methods raise ``FileNotFoundError`` for a missing object; other
    ``OSError``s and client errors are transient (see ``is_transient``)."""

    name: str
    can_read_back: bool = False  # whether an Upload's bytes can be read before publishing

    @abstractmethod
    async def size(self, key: str) -> int: ...

    @abstractmethod
    async def read(self, key: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    async def open_reader(self, key: str) -> Reader: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abstractmethod
    async def begin(self, key: str, ref: str, size: int | None) -> Upload:
        """Start a partial object for ``key``; ``ref`` makes its temporary name unique."""

    @abstractmethod
    async def resume(self, upload: Upload) -> bool:
        """Whether the partial object still exists (a restarted process may carry on)."""

    @abstractmethod
    async def write(self, upload: Upload, index: int, offset: int, data: bytes) -> str | None:
        """Write chunk ``index`` at ``offset``; returns the part's ETag where there is one."""

    async def read_back(self, upload: Upload, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def hash_back(
        self, upload: Upload, offset: int, length: int, hasher: Hasher, buffer: bytearray
    ) -> None:
        """Feed a range of the partial object, read back, to ``hasher`` (``buffer`` may be
        used to avoid allocating)."""
        hasher.update(await self.read_back(upload, offset, length))

    @abstractmethod
    async def publish(self, upload: Upload, etags: list[str | None]) -> None:
        """Make the object visible under its key, atomically, replacing any older one."""

    @abstractmethod
    async def abort(self, upload: Upload) -> None:
        """Throw a partial object away (nothing becomes visible)."""

    async def partial_uploads(self, older_than: datetime) -> list[Upload]:
        """Partial objects (begun, neither published nor aborted) last touched before
        ``older_than``: what a sweep of abandoned uploads looks at."""
        return []

    def local_path(self, key: str) -> Path | None:
        return None

    async def close(self) -> None:
        return None


class _FileReader:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def read(self, n: int) -> bytes:
        data: bytes = await asyncio.to_thread(self._handle.read, n)
        return data

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)


class FileTier(Tier):
    """A directory: objects are files under ``root``, uploads are files under ``root/.stratus-tmp``
    (same filesystem, so publishing is a rename)."""

    can_read_back = True

    def __init__(self, name: str, settings: TierSettings, *, fsync: bool = True) -> None:
        self.name = name
        self.root = Path(settings.root or f"run/data/{name}").resolve()
        self.fs = fsspec.filesystem("file", **settings.options)
        self.fsync = fsync

    def local_path(self, key: str) -> Path:
        return self.root / key

    def _temp(self, ref: str) -> Path:
        return self.root / TEMP_DIR / ref

    async def size(self, key: str) -> int:
        info = await asyncio.to_thread(self.fs.info, str(self.local_path(key)))
        if info.get("type") != "file":
            raise FileNotFoundError(key)
        return int(info["size"])

    def _read(self, path: Path, offset: int, length: int) -> bytes:
        with self.fs.open(str(path), "rb") as f:
            f.seek(offset)
            data: bytes = f.read(length)
        if len(data) != length:
            raise OSError(f"short read at {offset}: {len(data)} of {length} bytes")
        return data

    async def read(self, key: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, self.local_path(key), offset, length)

    async def open_reader(self, key: str) -> Reader:
        handle = await asyncio.to_thread(self.fs.open, str(self.local_path(key)), "rb")
        return _FileReader(handle)

    def _delete(self, key: str) -> None:
        path = self.local_path(key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(str(path))
        self._prune(path.parent, stop=self.root / key.split("/", 1)[0])

    @staticmethod
    def _prune(folder: Path, *, stop: Path) -> None:
        """Remove the folders a deleted object leaves empty, up to (not including) ``stop``,
        the tenant's own folder: a folder left behind would take the name of a dataset."""
        while folder != stop and folder.is_relative_to(stop):
            try:
                folder.rmdir()  # only ever an empty one
            except OSError:  # not empty (another dataset), or gone already
                return
            folder = folder.parent

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _create(self, temp: Path, size: int | None) -> None:
        self.fs.makedirs(str(temp.parent), exist_ok=True)
        with self.fs.open(str(temp), "wb") as f:
            if size:
                f.truncate(size)

    async def begin(self, key: str, ref: str, size: int | None) -> Upload:
        temp = self._temp(ref)
        await asyncio.to_thread(self._create, temp, size)
        return Upload(key=key, temp=str(temp))

    async def resume(self, upload: Upload) -> bool:
        return bool(upload.temp) and await asyncio.to_thread(self.fs.isfile, upload.temp)

    def _write(self, temp: str, offset: int, data: bytes) -> None:
        with self.fs.open(temp, "r+b") as f:
            f.seek(offset)
            f.write(data)

    async def write(self, upload: Upload, index: int, offset: int, data: bytes) -> str | None:
        await asyncio.to_thread(self._write, upload.temp, offset, data)
        return None

    async def read_back(self, upload: Upload, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, Path(upload.temp), offset, length)

    @staticmethod
    def _hash_back(temp: str, offset: int, length: int, hasher: Hasher, buffer: bytearray) -> None:
        """Read the range back in pieces of the buffer's size (at most ``READ_BACK_PIECE``),
        each hashed while it is in the CPU's cache."""
        view = memoryview(buffer)[: max(1, min(len(buffer), READ_BACK_PIECE))]
        with open(temp, "rb", buffering=0) as f:
            f.seek(offset)
            got = 0
            while got < length:
                n = f.readinto(view[: length - got])
                if not n:
                    raise OSError(f"short read back at {offset + got}")
                hasher.update(view[:n])
                got += n

    async def hash_back(
        self, upload: Upload, offset: int, length: int, hasher: Hasher, buffer: bytearray
    ) -> None:
        await asyncio.to_thread(self._hash_back, upload.temp, offset, length, hasher, buffer)

    def copy_chunk(self, source: Path, upload: Upload, offset: int, length: int) -> None:
        """Copy a range of the file ``source`` into the partial object at the same offset,
        in the kernel (``copy_file_range``) where the two filesystems allow, else through a
        buffer. Blocking: the datamover calls it from its copying thread."""
        kernel = True
        with open(source, "rb", buffering=0) as s, open(upload.temp, "r+b", buffering=0) as d:
            done = 0
            while done < length:
                at, left = offset + done, length - done
                if kernel:
                    try:
                        n = os.copy_file_range(s.fileno(), d.fileno(), left, at, at)
                    except OSError as exc:
                        if exc.errno not in NO_KERNEL_COPY:
                            raise
                        kernel = False  # not between these two filesystems: through memory
                        continue
                else:
                    data = os.pread(s.fileno(), min(left, 2**20), at)
                    n = os.pwrite(d.fileno(), data, at) if data else 0
                if n == 0:
                    raise OSError(f"short copy at {at}: the source ended early")
                done += n

    def hash_chunk(
        self, upload: Upload, offset: int, length: int, hasher: Hasher, buffer: bytearray
    ) -> None:
        """``hash_back`` without leaving the calling thread."""
        self._hash_back(upload.temp, offset, length, hasher, buffer)

    def _publish(self, temp: str, key: str) -> None:
        if self.fsync:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        final = self.local_path(key)
        for _ in range(PUBLISH_TRIES):
            self._make_room(final, tenant_root=self.root / key.split("/", 1)[0])
            self.fs.makedirs(str(final.parent), exist_ok=True)
            try:
                os.replace(temp, final)  # atomic: readers see the old file or the new one
                return
            except FileNotFoundError:
                # The folder was pruned (the last other dataset in it was deleted) between
                # making it and the rename: make it again. A missing temp file is an answer.
                if not os.path.exists(temp):
                    raise
        raise FileNotFoundError(f"{final.parent} kept disappearing")

    @staticmethod
    def _make_room(final: Path, *, tenant_root: Path) -> None:
        """Clear what deleted datasets whose clean-up has not run yet (it runs after the
        delete's commit) leave in the way: a file where a folder of ``final`` goes, a folder
        where ``final`` goes. Whatever is there is such a leftover: a name is published only
        once the catalogue holds no dataset above or below it (``catalog.claim_name``), or
        for a dataset that exists, which rules out the same."""
        for folder in reversed(final.parents):  # from the top down
            if folder == tenant_root or not folder.is_relative_to(tenant_root):
                continue
            if os.path.lexists(folder) and not folder.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    folder.unlink()
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final, ignore_errors=True)  # a clean-up racing here removes the same

    async def publish(self, upload: Upload, etags: list[str | None]) -> None:
        await asyncio.to_thread(self._publish, upload.temp, upload.key)

    async def abort(self, upload: Upload) -> None:
        if upload.temp:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self.fs.rm_file, upload.temp)

    def _stale_temps(self, older_than: float) -> list[Upload]:
        stale: list[Upload] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / TEMP_DIR) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # published meanwhile
                    if entry.is_file() and entry.stat().st_mtime < older_than:
                        stale.append(Upload(key="", temp=entry.path))
        return stale

    async def partial_uploads(self, older_than: datetime) -> list[Upload]:
        """Temporary files not written since ``older_than``."""
        return await asyncio.to_thread(self._stale_temps, older_than.astimezone(UTC).timestamp())


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same storage call may succeed (an outage, not an answer)."""
    if isinstance(exc, PERMANENT_ERRORS):
        return False
    if isinstance(exc, OSError | TimeoutError):
        return True
    module = type(exc).__module__
    # botocore's connection and protocol errors, aiohttp's client errors
    return module.startswith(("botocore", "aiobotocore", "aiohttp"))
