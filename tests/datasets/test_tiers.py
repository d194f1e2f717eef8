"""Only configured tiers are offered: an ``s3`` tier without a bucket and a key pair is a 422
wherever a tier is named (uploads, migrations, jobs' outputs), and ``GET /v1/tiers`` lists
what is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.settings import StorageSettings, TierSettings
from tests.datamover.harness import CHUNK, new_tenant, put

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}


@pytest.fixture(scope="module")
async def bare(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose ``s3`` tier has no credentials (as a cluster with none set up)."""
    root = tmp_path_factory.mktemp("bare-tiers")
    storage = StorageSettings.model_validate(
        {
            "local": {"root": str(root / "local")},
            "archive": {"root": str(root / "archive")},
            "chunk_bytes": CHUNK,
            "fsync": False,
        }
    )
    app = create_app(GatewaySettings(storage=storage))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
            yield client


def test_an_s3_tier_is_configured_by_a_bucket_and_a_key_pair() -> None:
    keys = {"access_key_id": "k", "secret_access_key": "s"}
    assert not TierSettings(kind="s3").configured
    assert not TierSettings(kind="s3", access_key_id="k").configured
    assert not TierSettings(kind="s3", bucket="", **keys).configured
    assert TierSettings(kind="s3", **keys).configured
    assert TierSettings(kind="s3", enabled=True).configured  # credentials from the environment
    assert not TierSettings(kind="file", enabled=False).configured
    assert TierSettings(kind="file").configured
    assert list(StorageSettings().tiers()) == ["local", "archive"]


def test_the_default_tier_must_be_configured() -> None:
    with pytest.raises(ValidationError, match="not configured"):
        StorageSettings(default_tier="s3")


async def test_tiers_lists_the_configured_tiers(
    api: httpx.AsyncClient, bare: httpx.AsyncClient
) -> None:
    t = await new_tenant(api)
    r = await bare.get("/v1/tiers", headers=t.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "items": [
            {"name": "local", "kind": "file", "default": True},
            {"name": "archive", "kind": "file", "default": False},
        ]
    }
    full = await api.get("/v1/tiers", headers=t.headers)
    assert {"name": "s3", "kind": "s3", "default": False} in full.json()["items"]
    assert (await bare.get("/v1/tiers")).status_code == 401


async def test_an_unconfigured_tier_is_a_422_wherever_it_is_named(
    api: httpx.AsyncClient, bare: httpx.AsyncClient, storage: StorageSettings
) -> None:
    t = await new_tenant(api)
    h = t.headers
    up = await bare.put("/v1/datasets/a.bin", params={"tier": "s3"}, content=b"abc", headers=h)
    assert up.status_code == 422, up.text
    assert up.headers["content-type"].startswith("application/problem+json")
    assert "not configured" in up.json()["detail"]
    assert (await bare.get("/v1/datasets/a.bin", params={"meta": 1}, headers=h)).status_code == 404

    r = await bare.put("/v1/datasets/b.bin", content=b"abc", headers=h)
    assert r.status_code == 201, r.text
    m = await bare.post("/v1/migrations", json={"dataset": "b.bin", "to_tier": "s3"}, headers=h)
    assert m.status_code == 422, m.text
    assert m.json()["errors"][0]["loc"] == ["body", "to_tier"]
    listed = await bare.get("/v1/migrations", headers=h)
    assert listed.json()["items"] == []

    job = await bare.post("/v1/jobs", json={**MC, "output_tier": "s3"}, headers=h)
    assert job.status_code == 422, job.text
    assert job.json()["errors"][0]["loc"] == ["body", "output_tier"]
    ok = await bare.post("/v1/jobs", json={**MC, "output_tier": "archive"}, headers=h)
    assert ok.status_code == 201, ok.text


async def test_a_configured_s3_tier_is_accepted(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    ds = await put(api, t, "on-s3.bin", b"abc", tier="s3")
    assert ds["tier"] == "s3"
