"""An S3 upload's parts: each carries two checksums that S3 verifies on receipt, its
SHA-256, signed (SigV4, ``x-amz-content-sha256``), and its CRC32 (``x-amz-checksum-crc32``;
the upload is created with ``ChecksumAlgorithm=CRC32``, as boto3's ``upload_file`` does, so
the object gets a composite CRC32 of its parts' and completion names each part's). Both are
computed on a worker thread (hashlib and zlib release the GIL: the parts in flight hash in
parallel) and handed to botocore, which would otherwise hash 8 MiB on the event loop per part
while the other parts wait. Without a checksum algorithm S3 (and moto) computes a
full-object CRC64NVME at completion, a second pass over the whole object on the server.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

import botocore.auth
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.auth import S3SigV4Auth

PREHASHED = "s3v4-stratus-prehashed"  # a signature version name, for UploadPart only
CHECKSUM_ALGORITHM = "CRC32"  # of each part, verified by S3; the object's is a composite


_HEAD_BYTES = 64 * 1024  # of a part, sent joined with the request's headers


class PartBody(Payload):
    """A part's bytes, not copied (a view of the chunk read), with their SHA-256 (hex),
    computed on a worker thread, as the aiohttp payload botocore hands on as is.

    aiohttp would copy a bytes-like body twice on the event loop, 8 MiB each: its
    ``BytesPayload`` slices it to the declared length, and on Python before 3.12.9 it joins
    the request's headers and the body into one new bytes object. This payload writes the
    first ``_HEAD_BYTES`` (joined with the headers) and then the rest as a memoryview, which
    the transport sends from the chunk's own buffer. ``read``/``seek``/``tell`` make it the
    readable body botocore's parameter validation asks for; with the hash and the CRC32
    given, botocore reads nothing."""

    def __init__(self, data: bytes | bytearray | memoryview, sha256: str) -> None:
        view = memoryview(data).cast("B")
        super().__init__(view, content_type="application/octet-stream")
        self._size = view.nbytes
        self._view = view
        self._pos = 0
        self.sha256 = sha256

    def __len__(self) -> int:
        return self._view.nbytes

    def read(self, n: int = -1) -> bytes:
        end = self._view.nbytes if n < 0 else min(self._pos + n, self._view.nbytes)
        data = bytes(self._view[self._pos : end])
        self._pos = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._view.nbytes)[whence]
        self._pos = max(0, min(base + offset, self._view.nbytes))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._view).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return bytes(self._view)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        await writer.write(view[:_HEAD_BYTES])
        if view.nbytes > _HEAD_BYTES:
            await writer.write(view[_HEAD_BYTES:])


def prepare_part(
    data: bytes | bytearray | memoryview, *, signed: bool = True
) -> tuple[PartBody, str]:
    """The part to send and its CRC32 (base64, ``ChecksumCRC32``): on a worker thread.
    ``signed``: whether the payload's SHA-256 goes into the signature (``S3Tier.signs_payload``);
    when not, it is not computed at all."""
    sha256 = hashlib.sha256(data).hexdigest() if signed else ""
    crc = zlib.crc32(data).to_bytes(4, "big")
    return PartBody(data, sha256), base64.b64encode(crc).decode()


class PrehashedS3SigV4Auth(S3SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's S3 SigV4 signer, taking the payload's SHA-256 from a ``PartBody``; any
    other body is hashed as usual."""

    def payload(self, request: Any) -> str:
        body = request.body
        if (
            isinstance(body, PartBody)
            and body.sha256
            and not self._is_streaming_checksum_payload(request)
            and self._should_sha256_sign_payload(request)
        ):
            return body.sha256
        payload: str = super().payload(request)
        return payload


botocore.auth.AUTH_TYPE_MAPS.setdefault(PREHASHED, PrehashedS3SigV4Auth)


def choose_prehashed(signature_version: Any, context: dict[str, Any], **_: Any) -> str | None:
    """``choose-signer.s3.UploadPart``: the prehashed signer where botocore would take plain
    S3 SigV4 (``s3v4``); else botocore's own choice."""
    if context.get("auth_type") not in (None, "v4") or context.get("unsigned_payload"):
        return None
    return PREHASHED if signature_version in ("v4", "s3v4") else None
