"""Stage-out: a job's outputs on the tier the job names (``output_tier``), when not ``local``.

The kernel writes each output into the attempt's folder on ``local`` as always. A successful
attempt then copies each file into a partial object (``Upload``) on the target tier through
the shared tier interface, chunk by chunk with the storage retry policy behind the tier's
breaker, hashing the bytes it reads from the file. The copy is verified before anything is
published: a tier that can read a partial object back (a directory) has every chunk hashed
again from the tier and compared with the file's checksum; on S3 each part's ETag must be
the MD5 of the part sent. Nothing is visible on the tier yet: ``record_attempt`` publishes
the partial objects (rename, multipart completion) under the dataset's lock in the
transaction that records the job SUCCEEDED, so the job is SUCCEEDED exactly when its
outputs are readable there. Whatever was not published is aborted afterwards
(``abort_staged``); a failed copy fails the attempt (retryable: an outage, not the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.logging import get_logger
from shared.resilience import RetryPolicy
from shared.storage.checksum import format_checksum, new_hasher
from shared.storage.names import object_key
from shared.storage.registry import Storage
from shared.storage.tiers import READ_BACK_PIECE, Upload

log = get_logger(__name__)
POLICY = RetryPolicy(max_attempts=5)


class StageOutFailed(Exception):
    """The copy of an output to its tier did not verify."""


@dataclass(frozen=True)
class StagedOutput:
    """An output copied, verified and not yet published on ``tier``."""

    name: str
    tier: str
    upload: Upload
    etags: list[str | None]
    size: int
    checksum: str


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise StageOutFailed(f"{path.name}: short read at {offset}")
    return data


def _etag_matches(etag: str | None, data: bytes) -> bool:
    """An S3 part's ETag is the MD5 of its bytes (where it looks like one: 32 hex digits)."""
    if etag is None:
        return True
    plain = etag.strip('"')
    if len(plain) != 32:
        return True  # an encrypted bucket's ETag is no digest: the checksum alone then
    return plain.lower() == hashlib.md5(data, usedforsecurity=False).hexdigest()


async def _copy_one(
    storage: Storage, tier: str, name: str, upload: Upload, path: Path
) -> StagedOutput:
    target = storage.tier(tier)
    size = (await asyncio.to_thread(path.stat)).st_size
    chunk = storage.chunk_bytes
    source_hash, etags = new_hasher(), []
    for index, offset in enumerate(range(0, size, chunk)):
        length = min(chunk, size - offset)
        data = await asyncio.to_thread(_read, path, offset, length)
        source_hash.update(data)
        etag = await storage.call(
            tier,
            lambda d=data, i=index, o=offset: target.write(upload, i, o, d),  # type: ignore[misc]
            policy=POLICY,
            what="stage-out write",
        )
        if not _etag_matches(etag, data):
            raise StageOutFailed(f"output {name!r}: part {index + 1} arrived altered on {tier!r}")
        etags.append(etag)
    checksum = format_checksum(source_hash)
    if target.can_read_back:
        back, buffer = new_hasher(), bytearray(READ_BACK_PIECE)
        for offset in range(0, size, chunk):
            length = min(chunk, size - offset)
            await storage.call(
                tier,
                lambda o=offset, n=length: target.hash_back(upload, o, n, back, buffer),  # type: ignore[misc]
                policy=POLICY,
                what="stage-out read back",
            )
        if format_checksum(back) != checksum:
            raise StageOutFailed(f"output {name!r}: the copy on {tier!r} does not match")
    return StagedOutput(name, tier, upload, etags, size, checksum)


async def stage_out(
    storage: Storage,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    attempt: int,
    tier: str,
    names: Mapping[str, str],
    files: Mapping[str, Path],
    staged: dict[str, StagedOutput],
) -> None:
    """Copy each output file (slot -> ``files[slot]``) into a verified partial object on
    ``tier``; each is added to ``staged`` as soon as it is begun, so that the caller aborts
    it whatever happens next."""
    for i, slot in enumerate(sorted(names)):
        name, path = names[slot], files[slot]
        size = path.stat().st_size
        key = object_key(tenant_id, name)
        ref = f"job-{job_id}-{attempt}-{i}"
        upload = await storage.call(
            tier,
            lambda k=key, r=ref, s=size: storage.tier(tier).begin(k, r, s),  # type: ignore[misc]
            policy=POLICY,
            what="stage-out begin",
        )
        staged[slot] = StagedOutput(name, tier, upload, [], size, "")
        staged[slot] = await _copy_one(storage, tier, name, upload, path)


async def abort_staged(storage: Storage, staged: Mapping[str, StagedOutput]) -> None:
    """Throw away the partial objects not published (a no-op for those that were)."""
    for out in staged.values():
        try:
            tier = storage.tier(out.tier)
            await storage.call(out.tier, lambda t=tier, u=out.upload: t.abort(u))  # type: ignore[misc]
        except Exception as exc:  # the datamover's sweep removes it later
            with contextlib.suppress(Exception):
                log.warning("stage_out_abort_failed", dataset=out.name, error=str(exc))
