"""The S3 tier on s3fs (any S3-compatible endpoint).

Uploads are multipart uploads: a part per chunk, in any order, resumable by ``UploadId``;
completing the upload is the atomic publish (nothing is visible before). Ranged GETs read
chunks; a dataset download is one GET, so it reads one consistent version of the object.
Retries are the caller's (``shared.resilience``): s3fs and botocore are told to try once.
How each part is hashed and sent: ``shared.storage.s3_parts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime
from typing import Any

import s3fs

from shared.settings import TierSettings
from shared.storage.s3_parts import CHECKSUM_ALGORITHM, PREHASHED, choose_prehashed, prepare_part
from shared.storage.tiers import Reader, Tier, Upload


def _is_tls(endpoint_url: str | None) -> bool:
    """Whether requests go over TLS: an ``https`` endpoint, or none (AWS's own, always TLS)."""
    return endpoint_url is None or endpoint_url.lower().startswith("https://")


class _BodyReader:
    def __init__(self, body: Any) -> None:
        self._body = body

    async def read(self, n: int) -> bytes:
        data: bytes = await self._body.read(n)
        return data

    async def close(self) -> None:
        result = self._body.close()
        if asyncio.iscoroutine(result):
            await result


class S3Tier(Tier):
    can_read_back = False

    def __init__(self, name: str, settings: TierSettings) -> None:
        self.name = name
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/")
        self._fs: Any = None
        self._bucket_ready = False
        # Over TLS a part is protected in transit by TLS and checked on receipt by its CRC32,
        # as boto3 sends it to S3 over HTTPS (UNSIGNED-PAYLOAD): no SHA-256 of each part, the
        # costliest hash of the upload. Over plain HTTP the SigV4 payload signature is what
        # stops a part from being altered on the way, so there it is computed and signed.
        # (botocore, given the CRC32 by us, would sign the payload over TLS too unless told.)
        self.signs_payload = not _is_tls(settings.endpoint_url)
        self._lock = asyncio.Lock()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _new_fs(self) -> Any:
        s = self.settings
        client_kwargs: dict[str, Any] = {}
        if s.region:
            client_kwargs["region_name"] = s.region
        fs = s3fs.S3FileSystem(
            key=s.access_key_id.get_secret_value() if s.access_key_id else None,
            secret=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
            endpoint_url=s.endpoint_url,
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": s.connect_timeout_s,
                "read_timeout": s.read_timeout_s,
                "retries": {"total_max_attempts": 1},
                # No checksum of botocore's own: it would hash each part on the event loop
                # while the other parts wait. prepare_part gives it the CRC32; in transit a
                # part is protected by TLS, or over plain HTTP by the SigV4 payload SHA-256
                # the server checks; the datamover hashes what it sends end to end against
                # the source's checksum.
                "request_checksum_calculation": "when_required",
                "s3": {"payload_signing_enabled": self.signs_payload},
            },
            asynchronous=True,
            skip_instance_cache=True,
            **s.options,
        )
        fs.retries = 1  # our retry policy and circuit breaker decide, not s3fs's loop
        return fs

    async def _call(self, method: str, **kwargs: Any) -> Any:
        if self._fs is None:
            async with self._lock:
                if self._fs is None:
                    fs = self._new_fs()
                    await fs.set_session()
                    fs.s3.meta.events.register(
                        "choose-signer.s3.UploadPart", choose_prehashed, unique_id=PREHASHED
                    )
                    self._fs = fs
        return await self._fs._call_s3(method, Bucket=self.bucket, **kwargs)

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            await self._call("head_bucket")
        except FileNotFoundError:
            kwargs: dict[str, Any] = {}
            if self.settings.region and self.settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            with contextlib.suppress(FileExistsError):
                await self._call("create_bucket", **kwargs)
        self._bucket_ready = True

    async def size(self, key: str) -> int:
        head = await self._call("head_object", Key=self._key(key))
        return int(head["ContentLength"])

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        resp = await self._call(
            "get_object", Key=self._key(key), Range=f"bytes={offset}-{offset + length - 1}"
        )
        body = resp["Body"]
        try:
            data: bytes = await body.read()  # the whole range, read in one buffer
        finally:
            await _BodyReader(body).close()
        if len(data) != length:
            raise OSError(f"short read at {offset}: {len(data)} of {length} bytes")
        return data

    async def open_reader(self, key: str) -> Reader:
        resp = await self._call("get_object", Key=self._key(key))
        return _BodyReader(resp["Body"])

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self._call("delete_object", Key=self._key(key))

    async def begin(self, key: str, ref: str, size: int | None) -> Upload:
        await self._ensure_bucket()
        if size == 0:
            return Upload(key=key)  # nothing to upload: publishing puts an empty object
        create = {"Key": self._key(key), "ChecksumAlgorithm": CHECKSUM_ALGORITHM}
        try:
            resp = await self._call("create_multipart_upload", **create)
        except FileNotFoundError:  # the bucket went away: create it again, once
            self._bucket_ready = False
            await self._ensure_bucket()
            resp = await self._call("create_multipart_upload", **create)
        return Upload(key=key, upload_id=str(resp["UploadId"]))

    async def resume(self, upload: Upload) -> bool:
        if upload.upload_id is None:
            return True
        try:
            await self._call(
                "list_parts", Key=self._key(upload.key), UploadId=upload.upload_id, MaxParts=1
            )
        except FileNotFoundError:
            return False
        return True

    async def write(self, upload: Upload, index: int, offset: int, data: bytes) -> str | None:
        if upload.upload_id is None:
            raise ValueError("this upload has no parts (an empty object)")
        body, crc32 = await asyncio.to_thread(prepare_part, data, signed=self.signs_payload)
        resp = await self._call(
            "upload_part",
            Key=self._key(upload.key),
            UploadId=upload.upload_id,
            PartNumber=index + 1,
            Body=body,
            ChecksumCRC32=crc32,
        )
        return str(resp["ETag"])

    async def publish(self, upload: Upload, etags: list[str | None]) -> None:
        key = self._key(upload.key)
        if not etags:
            await self._ensure_bucket()
            await self._call("put_object", Key=key, Body=b"")
            if upload.upload_id is not None:
                await self.abort(upload)
            return
        if upload.upload_id is None:
            raise ValueError("parts without a multipart upload")
        checksums = await self._part_checksums(upload)
        parts: list[dict[str, Any]] = []
        for i, etag in enumerate(etags):
            part: dict[str, Any] = {"PartNumber": i + 1, "ETag": etag}
            if i + 1 in checksums:  # what S3 verified on receipt (an upload created with CRC32)
                part[f"Checksum{CHECKSUM_ALGORITHM}"] = checksums[i + 1]
            parts.append(part)
        await self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload.upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def _part_checksums(self, upload: Upload) -> dict[int, str]:
        """Part number -> the part's CRC32 as S3 recorded it (none for an upload created
        without a checksum algorithm): completion must name them. They are not kept with the
        chunks, so that a part sent before a restart needs nothing more than its ETag."""
        found: dict[int, str] = {}
        marker: dict[str, Any] = {}
        while True:
            page = await self._call(
                "list_parts", Key=self._key(upload.key), UploadId=upload.upload_id, **marker
            )
            for part in page.get("Parts", []):
                if checksum := part.get(f"Checksum{CHECKSUM_ALGORITHM}"):
                    found[int(part["PartNumber"])] = str(checksum)
            if not page.get("IsTruncated"):
                return found
            marker = {"PartNumberMarker": page["NextPartNumberMarker"]}

    async def abort(self, upload: Upload) -> None:
        if upload.upload_id is None:
            return
        with contextlib.suppress(FileNotFoundError):
            await self._call(
                "abort_multipart_upload", Key=self._key(upload.key), UploadId=upload.upload_id
            )

    async def partial_uploads(self, older_than: datetime) -> list[Upload]:
        """Multipart uploads under this tier's prefix, on keys shaped as Stratus makes them
        (``<tenant uuid>/<name>``), last touched before ``older_than``: begun then, and no
        part uploaded since (an upload still receiving parts is alive, however old)."""
        found: list[Upload] = []
        markers: dict[str, str] = {}
        while True:
            try:
                page = await self._call(
                    "list_multipart_uploads",
                    Prefix=f"{self.prefix}/" if self.prefix else "",
                    **markers,
                )
            except FileNotFoundError:  # no bucket yet: no uploads
                return found
            for item in page.get("Uploads", []):
                key = self._unkey(str(item["Key"]))
                if key is None or item["Initiated"] >= older_than:
                    continue
                upload = Upload(key=key, upload_id=str(item["UploadId"]))
                if not await self._touched_since(upload, older_than):
                    found.append(upload)
            if not page.get("IsTruncated"):
                return found
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    async def _touched_since(self, upload: Upload, since: datetime) -> bool:
        """Whether a part of the upload was uploaded at ``since`` or later (or the upload
        is gone already)."""
        marker: dict[str, Any] = {}
        while True:
            try:
                page = await self._call(
                    "list_parts", Key=self._key(upload.key), UploadId=upload.upload_id, **marker
                )
            except FileNotFoundError:
                return True
            if any(part["LastModified"] >= since for part in page.get("Parts", [])):
                return True
            if not page.get("IsTruncated"):
                return False
            marker = {"PartNumberMarker": page["NextPartNumberMarker"]}

    def _unkey(self, key: str) -> str | None:
        """The object key of a full S3 key, or None when it is not one of ours."""
        if self.prefix:
            if not key.startswith(f"{self.prefix}/"):
                return None
            key = key[len(self.prefix) + 1 :]
        tenant, _, name = key.partition("/")
        try:
            uuid.UUID(tenant)
        except ValueError:
            return None
        return key if name else None

    async def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is not None and getattr(fs, "_s3", None) is not None:
            with contextlib.suppress(Exception):
                await fs._s3.__aexit__(None, None, None)
