"""The two copy paths of the engine on their own (no database): a directory-to-directory copy,
where one thread copies and another reads each piece back and hashes it right behind; and an
S3 part, signed with a SHA-256 computed on a worker thread instead of the event loop."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
import xxhash
from botocore.awsrequest import AWSRequest

from services.datamover.engine import Copier, CopyJob, Throttle
from shared.resilience import RetriesExhausted, RetryPolicy
from shared.settings import StorageSettings
from shared.storage import Storage, Upload
from shared.storage.s3 import S3Tier
from shared.storage.s3_parts import PartBody, PrehashedS3SigV4Auth, prepare_part
from shared.storage.tiers import FileTier
from tests.datamover.harness import BUCKET, CHUNK, MotoServer, payload

KEY = "00000000-0000-0000-0000-0000000000c0/copy.bin"
POLICY = RetryPolicy(initial_s=0.01, max_interval_s=0.01, max_attempts=3)


def xxh(data: bytes) -> str:
    return "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()


def directories(root: Path, storage: StorageSettings) -> Storage:
    settings = storage.model_copy(
        update={
            "local": storage.local.model_copy(update={"root": str(root / "local")}),
            "archive": storage.archive.model_copy(update={"root": str(root / "archive")}),
        }
    )
    return Storage(settings)


async def copy_files(
    storage: Storage, data: bytes, done: dict[int, str | None] | None = None
) -> tuple[str, CopyJob, list[int]]:
    source = storage.tier("local")
    path = source.local_path(KEY)
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    target = storage.tier("archive")
    upload = await target.begin(KEY, f"copy-{os.urandom(4).hex()}", len(data))
    job = CopyJob("local", "archive", KEY, len(data), CHUNK, upload, dict(done or {}))
    reported: list[int] = []
    copier = Copier(
        storage,
        job,
        policy=POLICY,
        in_flight=4,
        on_chunk=lambda i, _e, _n: reported.append(i),
        throttle=Throttle(0),
    )
    return await copier.run(), job, reported


async def test_directory_copy_is_verified_from_the_target(
    tmp_path: Path, storage: StorageSettings
) -> None:
    data = payload(3 * CHUNK + 777, seed=21)
    checksum, job, reported = await copy_files(directories(tmp_path, storage), data)
    assert checksum == xxh(data)
    assert reported == [0, 1, 2, 3]
    assert Path(job.upload.temp).read_bytes() == data


async def test_directory_copy_resumed_copies_only_what_is_missing_and_verifies_all(
    tmp_path: Path, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks recorded before a restart are not copied again, but read back all the same: a
    chunk recorded as done whose bytes are wrong on the target fails the checksum."""
    data = payload(4 * CHUNK, seed=22)
    tiers = directories(tmp_path, storage)
    copied: list[int] = []
    real = FileTier.copy_chunk

    def counting(self: FileTier, source: Path, upload: Upload, offset: int, n: int) -> None:
        copied.append(offset // CHUNK)
        real(self, source, upload, offset, n)

    monkeypatch.setattr(FileTier, "copy_chunk", counting)
    checksum, _, reported = await copy_files(tiers, data, {0: None, 2: None})
    assert sorted(set(copied)) == [1, 3]
    assert reported == [1, 3]
    assert checksum != xxh(data)  # chunks 0 and 2 were never written to this new partial file


async def test_directory_copy_fails_when_the_read_back_fails(
    tmp_path: Path, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the verifying thread stops the copying one and is retried from the first
    chunk not verified; past the retry budget the copy fails. No thread is left behind."""
    data = payload(3 * CHUNK, seed=23)
    calls = {"n": 0}
    real = FileTier.hash_chunk

    def failing(self: FileTier, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("read back failed once")
        real(self, *args)

    monkeypatch.setattr(FileTier, "hash_chunk", failing)
    checksum, _, _ = await copy_files(directories(tmp_path / "once", storage), data)
    assert checksum == xxh(data)  # retried

    def broken(self: FileTier, *args: Any) -> None:
        raise OSError("the target cannot be read")

    monkeypatch.setattr(FileTier, "hash_chunk", broken)
    with pytest.raises(RetriesExhausted):
        await copy_files(directories(tmp_path / "always", storage), data)
    assert not [t for t in threading.enumerate() if t.name == "datamover-copy"]


async def test_directory_copy_fails_when_the_copy_fails(
    tmp_path: Path, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(3 * CHUNK, seed=24)

    def broken(self: FileTier, source: Path, upload: Upload, offset: int, n: int) -> None:
        if offset >= CHUNK:
            raise OSError("no space left")
        with open(upload.temp, "r+b") as f:
            f.seek(offset)
            f.write(data[offset : offset + n])

    monkeypatch.setattr(FileTier, "copy_chunk", broken)
    with pytest.raises(RetriesExhausted) as failed:
        await copy_files(directories(tmp_path, storage), data)
    assert "no space left" in str(failed.value.__cause__)
    assert not [t for t in threading.enumerate() if t.name == "datamover-copy"]


async def test_s3_part_is_signed_with_its_sha256_computed_off_the_loop(
    moto: MotoServer, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part's ``x-amz-content-sha256`` (part of the signature) and
    ``x-amz-checksum-crc32``, both checked by S3, are those of the bytes sent, and botocore
    did not hash the part itself (on the loop)."""
    tier = S3Tier("s3", storage.s3)
    data = payload(CHUNK + 3, seed=25)
    key = "00000000-0000-0000-0000-0000000000c1/signed.bin"
    try:
        upload = await tier.begin(key, "signed", len(data))
        sent: list[tuple[str, str]] = []

        def capture(request: Any, **_: Any) -> None:
            headers = {k.lower(): v for k, v in request.headers.items()}
            sha256, crc32 = headers["x-amz-content-sha256"], headers["x-amz-checksum-crc32"]
            sent.append((sha256.decode(), crc32.decode()))

        tier._fs.s3.meta.events.register("before-send.s3.UploadPart", capture)
        hashed_by_botocore: list[int] = []
        real = botocore.auth.SigV4Auth.payload

        def spy(self: botocore.auth.SigV4Auth, request: Any) -> str:
            body = request.body or b""
            hashed_by_botocore.append(len(body.getvalue() if hasattr(body, "getvalue") else body))
            payload: str = real(self, request)
            return payload

        monkeypatch.setattr(botocore.auth.SigV4Auth, "payload", spy)
        etag = await tier.write(upload, 0, 0, data)
        await tier.publish(upload, [etag])
    finally:
        await tier.close()
    crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert sent == [(hashlib.sha256(data).hexdigest(), crc32)]
    assert len(data) not in hashed_by_botocore
    assert etag is not None
    assert etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
    body = moto.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == data


def test_the_prehashed_signer_hashes_any_other_body_itself() -> None:
    """Only a ``PartBody`` brings its own hash (computed with it, off the loop); any other
    body, or a ``PartBody`` without one, is hashed by botocore as usual (it reads the
    ``PartBody`` as a file)."""
    data = b"a" * 100
    real = hashlib.sha256(data).hexdigest()
    auth = PrehashedS3SigV4Auth(None, "s3", "us-east-1")
    body, crc32 = prepare_part(data)
    assert body.read() == data
    assert len(body) == len(data)
    assert body.sha256 == real
    assert crc32 == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body.sha256 = "0" * 64  # the signer takes it as it is: only prepare_part sets it
    for sent, want in ((body, "0" * 64), (data, real), (PartBody(data, ""), real)):
        request = AWSRequest(method="PUT", url="http://127.0.0.1/b/k", data=sent)
        assert auth.payload(request) == want


async def test_a_part_goes_to_the_transport_from_the_chunks_own_buffer() -> None:
    """aiohttp joins the request's headers with the first write: that write is small, and the
    rest of the part is handed on as a view of the chunk read, not a copy."""
    data = payload(3 * 64 * 1024 + 5, seed=26)
    body, _ = prepare_part(data)
    writes: list[Any] = []

    class Writer:
        async def write(self, chunk: Any) -> None:
            writes.append(chunk)

    await body.write_with_length(Writer(), None)  # type: ignore[arg-type]
    assert b"".join(bytes(w) for w in writes) == data
    assert len(writes[0]) == 64 * 1024
    assert all(isinstance(w, memoryview) and w.obj is data for w in writes)
    writes.clear()
    await body.write_with_length(Writer(), 100)  # type: ignore[arg-type]
    assert b"".join(bytes(w) for w in writes) == data[:100]


async def test_over_tls_a_part_is_sent_unsigned_and_not_hashed_for_it(
    storage: StorageSettings,
) -> None:
    """Over plain HTTP the part's SHA-256 is signed (it guards the bytes on the way); over TLS
    it is not computed at all and the payload goes UNSIGNED, as boto3 sends parts to S3 over
    HTTPS; the CRC32, which S3 checks on receipt, is sent either way."""
    data = payload(1000, seed=27)
    plain = S3Tier("s3", storage.s3)
    tls = S3Tier("s3", storage.s3.model_copy(update={"endpoint_url": "https://s3.example.invalid"}))
    aws = S3Tier("s3", storage.s3.model_copy(update={"endpoint_url": None}))
    assert (plain.signs_payload, tls.signs_payload, aws.signs_payload) == (True, False, False)
    crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    signed, signed_crc = prepare_part(data, signed=True)
    unsigned, unsigned_crc = prepare_part(data, signed=False)
    assert signed.sha256 == hashlib.sha256(data).hexdigest()
    assert unsigned.sha256 == ""
    assert signed_crc == unsigned_crc == crc32
    for tier, url, body, want in (
        (plain, "http://127.0.0.1/b/k", signed, signed.sha256),
        (tls, "https://s3.example.invalid/b/k", unsigned, "UNSIGNED-PAYLOAD"),
    ):
        fs = tier._new_fs()
        await fs.set_session()  # builds the client; no request is sent
        try:
            request = AWSRequest(method="PUT", url=url, data=body)
            request.context["client_config"] = fs.s3.meta.config
            request.headers["x-amz-checksum-crc32"] = crc32
            auth = PrehashedS3SigV4Auth(None, "s3", "us-east-1")
            assert auth.payload(request) == want
        finally:
            await fs.s3.__aexit__(None, None, None)


@pytest.fixture
def tls_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """moto_server over HTTPS with a self-signed certificate for 127.0.0.1, which botocore
    trusts through ``AWS_CA_BUNDLE``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    server = MotoServer(tls=(cert, key))
    server.start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


async def test_an_upload_over_tls_sends_unsigned_parts_that_s3_accepts(
    tls_moto: MotoServer, storage: StorageSettings
) -> None:
    """A real multipart upload over HTTPS: each part goes UNSIGNED-PAYLOAD with its CRC32
    (checked by the server), and the object reads back byte for byte."""
    tier = S3Tier("s3", storage.s3.model_copy(update={"endpoint_url": tls_moto.url}))
    data = payload(CHUNK + 4321, seed=28)
    key = "00000000-0000-0000-0000-0000000000c2/tls.bin"
    sent: list[tuple[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        sha256, crc32 = headers["x-amz-content-sha256"], headers["x-amz-checksum-crc32"]
        sent.append((sha256.decode(), crc32.decode()))

    try:
        upload = await tier.begin(key, "tls", len(data))
        tier._fs.s3.meta.events.register("before-send.s3.UploadPart", capture)
        etags = [
            await tier.write(upload, 0, 0, data[:CHUNK]),
            await tier.write(upload, 1, CHUNK, data[CHUNK:]),
        ]
        await tier.publish(upload, etags)
    finally:
        await tier.close()
    crcs = [
        base64.b64encode(zlib.crc32(part).to_bytes(4, "big")).decode()
        for part in (data[:CHUNK], data[CHUNK:])
    ]
    assert sent == [("UNSIGNED-PAYLOAD", crcs[0]), ("UNSIGNED-PAYLOAD", crcs[1])]
    assert tls_moto.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
