"""List filters that no dataset name could match (a NUL, a character names never have) are
a 422 problem, never a 500 from the database."""

from __future__ import annotations

import httpx
import pytest

from tests.datamover.harness import new_tenant, put

BAD = ["%00", "a%00b", "%C3%A9", "a%20b"]


@pytest.mark.parametrize("raw", BAD)
async def test_a_dataset_prefix_no_name_could_have_is_a_422(
    api: httpx.AsyncClient, raw: str
) -> None:
    t = await new_tenant(api)
    r = await api.get(f"/v1/datasets?prefix={raw}", headers=t.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["loc"] == ["query", "prefix"]


@pytest.mark.parametrize("raw", BAD)
async def test_a_migration_dataset_filter_no_name_could_have_is_a_422(
    api: httpx.AsyncClient, raw: str
) -> None:
    t = await new_tenant(api)
    r = await api.get(f"/v1/migrations?dataset={raw}", headers=t.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["loc"] == ["query", "dataset"]


async def test_valid_filters_still_match(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    await put(api, t, "exp/a.bin", b"a")
    await put(api, t, "other", b"b")
    listed = await api.get("/v1/datasets", params={"prefix": "exp/"}, headers=t.headers)
    assert [d["name"] for d in listed.json()["items"]] == ["exp/a.bin"]
    empty = await api.get("/v1/datasets", params={"prefix": ""}, headers=t.headers)
    assert len(empty.json()["items"]) == 2
    migs = await api.get("/v1/migrations", params={"dataset": "exp/a.bin"}, headers=t.headers)
    assert migs.status_code == 200
    assert migs.json()["items"] == []
