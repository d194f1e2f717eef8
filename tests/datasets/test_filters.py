"""The filters of the dataset and migration lists: a name filter that no name could match (a
NUL, a character names never have) is a 422 problem, never a 500 from the database; the
creation-time window (``created_after``, ``created_before``) of every list."""

from __future__ import annotations

import asyncio

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


async def test_datasets_and_migrations_filter_by_creation_time(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    h = t.headers
    first = await put(api, t, "early.bin", b"a")
    await asyncio.sleep(0.01)
    second = await put(api, t, "late.bin", b"b")
    cut = first["created_at"]
    after = await api.get("/v1/datasets", params={"created_after": cut}, headers=h)
    assert after.status_code == 200, after.text
    assert [d["name"] for d in after.json()["items"]] == ["late.bin"]
    before = await api.get(
        "/v1/datasets", params={"created_before": second["created_at"]}, headers=h
    )
    assert [d["name"] for d in before.json()["items"]] == ["early.bin"]

    m1 = await api.post(
        "/v1/migrations", json={"dataset": "early.bin", "to_tier": "archive"}, headers=h
    )
    await asyncio.sleep(0.01)
    m2 = await api.post(
        "/v1/migrations", json={"dataset": "late.bin", "to_tier": "archive"}, headers=h
    )
    assert m1.status_code == m2.status_code == 202
    window = {"created_after": m1.json()["created_at"]}
    listed = await api.get("/v1/migrations", params=window, headers=h)
    assert [m["id"] for m in listed.json()["items"]] == [m2.json()["id"]]
    window = {"created_before": m2.json()["created_at"]}
    listed = await api.get("/v1/migrations", params=window, headers=h)
    assert [m["id"] for m in listed.json()["items"]] == [m1.json()["id"]]


@pytest.mark.parametrize("value", ["yesterday", "2026-01-01T00:00:00", "9999-12-31T23:00:00-05:00"])
@pytest.mark.parametrize("route", ["/v1/datasets", "/v1/migrations"])
async def test_a_creation_time_that_is_not_an_instant_is_a_422(
    api: httpx.AsyncClient, route: str, value: str
) -> None:
    t = await new_tenant(api)
    r = await api.get(route, params={"created_after": value}, headers=t.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
