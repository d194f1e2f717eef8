"""``/v1/datasets`` as the contract says: streamed upload and download, checksums, ETag,
listing, delete, quota, scopes, tenancy and names, against real tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import xxhash
from fastapi import FastAPI

from shared.settings import StorageSettings
from tests.datamover.harness import BUCKET, CHUNK, MotoServer, new_tenant, payload, put
from tests.gateway.test_submit_validation import npy


def xxh(data: bytes) -> str:
    return "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()


def local_file(storage: StorageSettings, tenant_id: str, name: str, tier: str = "local") -> Path:
    return Path(storage.tiers()[tier].root) / tenant_id / name


@pytest.mark.parametrize("size", [0, 1, CHUNK + 12_345])
async def test_put_then_get_round_trip(
    api: httpx.AsyncClient, storage: StorageSettings, size: int
) -> None:
    t = await new_tenant(api)
    data = payload(size, seed=size % 7)
    r = await api.put("/v1/datasets/exp/plate.npy", content=data, headers=t.headers)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "exp/plate.npy"
    assert ds["size"] == size
    assert ds["checksum"] == xxh(data)
    assert ds["tier"] == "local"
    assert r.headers["etag"] == f'"{xxh(data)}"'
    assert {"created_at", "updated_at"} <= set(ds)
    assert local_file(storage, t.id, "exp/plate.npy").read_bytes() == data

    got = await api.get("/v1/datasets/exp/plate.npy", headers=t.headers)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["etag"] == f'"{xxh(data)}"'
    assert got.headers["content-type"] == "application/octet-stream"
    same = await api.get(
        "/v1/datasets/exp/plate.npy", headers={**t.headers, "If-None-Match": got.headers["etag"]}
    )
    assert same.status_code == 304


async def test_overwrite_is_200_and_replaces_bytes(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    first = await put(api, t, "a.bin", b"first")
    r = await api.put("/v1/datasets/a.bin", content=b"second version", headers=t.headers)
    assert r.status_code == 200, r.text
    assert r.json()["checksum"] == xxh(b"second version")
    assert r.json()["created_at"] == first["created_at"]
    got = await api.get("/v1/datasets/a.bin", headers=t.headers)
    assert got.content == b"second version"


async def test_streamed_upload_without_length(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    pieces = [payload(70_000, seed=i) for i in range(40)]  # ~2.8 MB in odd pieces

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    r = await api.put("/v1/datasets/streamed", content=body(), headers=t.headers)
    assert r.status_code == 201, r.text
    assert r.json()["checksum"] == xxh(b"".join(pieces))


async def test_s3_tier_upload_and_download(api: httpx.AsyncClient, moto: MotoServer) -> None:
    t = await new_tenant(api)
    for name, data in {"s/empty": b"", "s/one": b"x", "s/big": payload(2 * CHUNK + 7)}.items():
        ds = await put(api, t, name, data, tier="s3")
        assert ds["tier"] == "s3"
        assert ds["checksum"] == xxh(data)
        obj = moto.client().get_object(Bucket=BUCKET, Key=f"{t.id}/{name}")
        assert obj["Body"].read() == data
        got = await api.get(f"/v1/datasets/{name}", headers=t.headers)
        assert got.content == data


async def test_meta_list_cursor_and_delete(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    t = await new_tenant(api)
    for i in range(3):
        await put(api, t, f"d/{i}", bytes([i]) * (i + 1))
    meta = await api.get("/v1/datasets/d/1", params={"meta": 1}, headers=t.headers)
    assert meta.status_code == 200
    assert meta.json()["size"] == 2
    assert meta.headers["content-type"].startswith("application/json")

    page = await api.get("/v1/datasets", params={"limit": 2}, headers=t.headers)
    assert page.status_code == 200
    body = page.json()
    assert [d["name"] for d in body["items"]] == ["d/2", "d/1"]  # newest first
    assert body["next_cursor"]
    rest = await api.get(
        "/v1/datasets", params={"limit": 2, "cursor": body["next_cursor"]}, headers=t.headers
    )
    assert [d["name"] for d in rest.json()["items"]] == ["d/0"]
    assert rest.json()["next_cursor"] is None

    r = await api.delete("/v1/datasets/d/1", headers=t.headers)
    assert r.status_code == 204
    assert (await api.get("/v1/datasets/d/1", headers=t.headers)).status_code == 404
    assert not local_file(storage, t.id, "d/1").exists()
    assert (await api.delete("/v1/datasets/d/1", headers=t.headers)).status_code == 404


async def test_storage_quota_answers_413(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api, quotas={"storage_bytes": 1000})
    await put(api, t, "q/a", b"a" * 600)
    r = await api.put("/v1/datasets/q/b", content=b"b" * 600, headers=t.headers)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"c" * 100  # no Content-Length: refused while streaming

    r = await api.put("/v1/datasets/q/c", content=body(), headers=t.headers)
    assert r.status_code == 413, r.text
    # replacing a dataset frees its bytes first
    await put(api, t, "q/a", b"a" * 900)
    names = [d["name"] for d in (await api.get("/v1/datasets", headers=t.headers)).json()["items"]]
    assert names == ["q/a"]


async def test_another_tenants_dataset_is_404(api: httpx.AsyncClient) -> None:
    a, b = await new_tenant(api), await new_tenant(api)
    await put(api, a, "secret.npy", b"mine")
    assert (await api.get("/v1/datasets/secret.npy", headers=b.headers)).status_code == 404
    meta = await api.get("/v1/datasets/secret.npy", params={"meta": 1}, headers=b.headers)
    assert meta.status_code == 404
    assert (await api.delete("/v1/datasets/secret.npy", headers=b.headers)).status_code == 404
    assert (await api.get("/v1/datasets", headers=b.headers)).json()["items"] == []
    r = await api.post(
        "/v1/migrations", json={"dataset": "secret.npy", "to_tier": "archive"}, headers=b.headers
    )
    assert r.status_code == 404
    own = await api.post(
        "/v1/migrations", json={"dataset": "secret.npy", "to_tier": "archive"}, headers=a.headers
    )
    assert own.status_code == 202
    other = await api.get(f"/v1/migrations/{own.json()['id']}", headers=b.headers)
    assert other.status_code == 404
    # b writing the same name gets its own dataset; a's is untouched
    await put(api, b, "secret.npy", b"theirs")
    assert (await api.get("/v1/datasets/secret.npy", headers=a.headers)).content == b"mine"


async def test_scopes(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    await put(api, t, "s.bin", b"x")
    reader = await new_tenant(api, scopes=["data:read"])
    jobs_only = await new_tenant(api, scopes=["jobs:read", "jobs:write"])
    r = await api.put("/v1/datasets/s.bin", content=b"y", headers=reader.headers)
    assert r.status_code == 403
    assert (await api.get("/v1/datasets", headers=jobs_only.headers)).status_code == 403
    assert (await api.get("/v1/datasets", headers=reader.headers)).status_code == 200
    r = await api.post(
        "/v1/migrations", json={"dataset": "s.bin", "to_tier": "s3"}, headers=reader.headers
    )
    assert r.status_code == 403
    assert (await api.get("/v1/datasets/s.bin")).status_code == 401


BAD_RAW_PATHS = [
    b"/v1/datasets/a/../../escape",  # dot segments, sent as they are (no client normalising)
    b"/v1/datasets/../x",
    b"/v1/datasets/a/./b",
    b"/v1/datasets//etc/passwd",  # absolute
    b"/v1/datasets/a//b",  # empty segment
    b"/v1/datasets/a/",  # trailing slash
    b"/v1/datasets/%2e%2e/escape",  # encoded forms
    b"/v1/datasets/a%2F..%2F..%2Fescape",
    b"/v1/datasets/%252e%252e/x",
    b"/v1/datasets/a%00b",
    b"/v1/datasets/a%5c..%5cescape",
    b"/v1/datasets/" + b"n" * 256,
]


async def raw_request(
    app: FastAPI, method: str, raw_path: bytes, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Call the ASGI app with exactly this path (HTTP clients normalise dot segments)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode()),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
        "state": {},
    }
    sent = False
    status, out_headers, out = 0, {}, bytearray()

    async def receive() -> dict[str, object]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[call-overload]
            for k, v in message["headers"]:  # type: ignore[attr-defined]
                out_headers[k.decode()] = v.decode()
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))  # type: ignore[arg-type]

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status, out_headers, bytes(out)


@pytest.mark.parametrize("raw", BAD_RAW_PATHS, ids=lambda r: r.decode()[13:40])
async def test_path_escapes_are_422_before_any_storage_call(
    api: httpx.AsyncClient, gateway: FastAPI, tiers_root: Path, raw: bytes
) -> None:
    t = await new_tenant(api)
    before = set(tiers_root.rglob("*"))
    for method in ("PUT", "GET", "DELETE"):
        status, headers, body = await raw_request(gateway, method, raw, t.headers, b"x")
        assert status == 422, (method, raw, status, body)
        assert headers["content-type"].startswith("application/problem+json")
    assert set(tiers_root.rglob("*")) == before  # not even a temporary file
    assert not (tiers_root / "escape").exists()
    assert not (tiers_root.parent / "escape").exists()


async def test_a_slash_sent_encoded_names_the_same_dataset(
    api: httpx.AsyncClient, gateway: FastAPI
) -> None:
    """OpenAPI clients encode ``/`` in a path parameter: ``dir%2Ffile`` is ``dir/file``."""
    t = await new_tenant(api)
    status, _, body = await raw_request(gateway, "PUT", b"/v1/datasets/dir%2Ffile", t.headers, b"x")
    assert status == 201, body
    r = await api.get("/v1/datasets/dir/file", headers=t.headers)
    assert r.status_code == 200
    assert r.content == b"x"


async def test_bad_names_are_422(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    for name in ("a//b", "a b", "é", "x:y", "a\\b", "n" * 256):
        r = await api.put(f"/v1/datasets/{name}", content=b"x", headers=t.headers)
        assert r.status_code == 422, (name, r.status_code, r.text)
    for tier in ("nope", ""):  # an empty ?tier= names no tier: not the default
        r = await api.put("/v1/datasets/ok", content=b"x", headers=t.headers, params={"tier": tier})
        assert r.status_code == 422, (tier, r.text)
    r = await api.post(
        "/v1/migrations", json={"dataset": "../x", "to_tier": "s3"}, headers=t.headers
    )
    assert r.status_code == 422


async def test_file_and_folder_names_clash_409(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    await put(api, t, "a/b", b"1")
    assert (await api.put("/v1/datasets/a", content=b"2", headers=t.headers)).status_code == 409
    assert (await api.put("/v1/datasets/a/b/c", content=b"3", headers=t.headers)).status_code == 409
    assert (await api.put("/v1/datasets/a_b", content=b"4", headers=t.headers)).status_code == 201


async def test_job_inputs_must_exist(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    job = {
        "kernel": "saxpy",
        "params": {"a": 2.0},
        "inputs": {"x": "v/x.npy", "y": "v/y.npy"},
        "outputs": {"y": "v/out.npy"},
    }
    r = await api.post("/v1/jobs", json=job, headers=t.headers)
    assert r.status_code == 422, r.text
    assert {tuple(e["loc"]) for e in r.json()["errors"]} == {
        ("body", "inputs", "x"),
        ("body", "inputs", "y"),
    }
    await put(api, t, "v/x.npy", npy(np.ones(4)))
    r = await api.post("/v1/jobs", json=job, headers=t.headers)
    assert r.status_code == 422
    assert [tuple(e["loc"]) for e in r.json()["errors"]] == [("body", "inputs", "y")]
    await put(api, t, "v/y.npy", npy(np.ones(4)))
    other = await new_tenant(api)
    assert (await api.post("/v1/jobs", json=job, headers=other.headers)).status_code == 422
    r = await api.post("/v1/jobs", json=job, headers=t.headers)
    assert r.status_code == 201, r.text


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_large_upload_keeps_memory_flat(api: httpx.AsyncClient) -> None:
    """2 GiB generated on the fly through the gateway (this process): RSS stays flat."""
    import asyncio

    t = await new_tenant(api)
    total = 2 * 2**30
    block = payload(2**20, seed=3)
    hasher = xxhash.xxh3_128()
    peak = base = rss_bytes()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.02)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(block)):
            hasher.update(block)
            yield block

    sampler = asyncio.create_task(sample())
    r = await api.put("/v1/datasets/big.bin", content=body(), headers=t.headers)
    done.set()
    await sampler
    assert r.status_code == 201, r.text
    assert r.json()["size"] == total
    assert r.json()["checksum"] == "xxh3-128:" + hasher.hexdigest()
    assert peak - base < 100 * 2**20, f"RSS grew by {(peak - base) / 2**20:.0f} MiB"
    assert (await api.delete("/v1/datasets/big.bin", headers=t.headers)).status_code == 204
