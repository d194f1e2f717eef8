"""Content checksums: xxh3-128 (``"xxh3-128:<hex>"``), computed while the bytes stream."""

from __future__ import annotations

from typing import Protocol

import xxhash

ALGORITHM = "xxh3-128"


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


def new_hasher() -> Hasher:
    return xxhash.xxh3_128()


def format_checksum(hasher: Hasher) -> str:
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def checksum_of(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return format_checksum(hasher)


def etag(checksum: str) -> str:
    """The HTTP ``ETag`` for a checksum (a strong, quoted entity tag)."""
    return f'"{checksum}"'
