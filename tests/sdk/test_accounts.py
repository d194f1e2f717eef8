"""Usage, the caller's tenant, and the admin helpers through the SDK, sync and async."""

from __future__ import annotations

import time

import pytest
from stratus_client import ApiError, AsyncClient, Client

from tests.conftest import ADMIN_KEY
from tests.sdk.conftest import MC


async def test_usage_and_tenant(client: Client, aclient: AsyncClient) -> None:
    job = client.submit("montecarlo_pi", params=MC)
    client.wait(job.id, timeout=60)
    usage = client.usage()
    assert usage.jobs.get("SUCCEEDED") == 1
    assert usage.cpu_seconds >= 0
    assert (await aclient.usage()).jobs == usage.jobs
    me = client.tenant()
    assert me.id == (await aclient.tenant()).id
    assert "max_queued_jobs" in me.quotas
    assert me.usage["max_queued_jobs"].limit == me.quotas["max_queued_jobs"]


async def test_admin_helpers(url: str, admin: Client) -> None:
    name = f"sdk-admin-{time.time_ns()}"
    tenant = admin.admin.create_tenant(name, weight=2, quotas={"max_queued_jobs": 7})
    assert (tenant.name, tenant.weight, tenant.quotas["max_queued_jobs"]) == (name, 2, 7)
    assert tenant.id in {t.id for t in admin.admin.tenants()}
    assert admin.admin.get_tenant(tenant.id).name == name
    assert admin.admin.update_tenant(tenant.id, weight=3).weight == 3
    with pytest.raises(ApiError) as taken:
        admin.admin.create_tenant(name)
    assert taken.value.status == 409
    reader = admin.admin.create_key(tenant.id, "reader", scopes=["jobs:read"])
    assert reader.scopes == ["jobs:read"]
    with Client(url, reader.key) as c:
        assert c.kernels()
        with pytest.raises(ApiError) as denied:
            c.submit("montecarlo_pi", params=MC)
        assert denied.value.status == 403
    async with AsyncClient(url, ADMIN_KEY) as aadmin:
        assert (await aadmin.admin.get_tenant(tenant.id)).weight == 3
        suspended = await aadmin.admin.update_tenant(tenant.id, suspended=True)
        assert suspended.suspended
        assert tenant.id in {t.id async for t in aadmin.admin.tenants()}
        writer = await aadmin.admin.create_key(tenant.id, "writer")
        await aadmin.admin.delete_key(tenant.id, writer.id)
        listed = [k async for k in aadmin.admin.keys(tenant.id)]
        assert [(k.id, k.name, k.state) for k in listed] == [
            (writer.id, "writer", "revoked"),
            (reader.id, "reader", "active"),
        ]
        assert listed[0].revoked_at is not None
        assert listed[1].revoked_at is None
        with pytest.raises(ApiError) as no_tenant:
            [k async for k in aadmin.admin.keys("00000000-0000-0000-0000-000000000000")]
        assert no_tenant.value.status == 404
        other = await aadmin.admin.create_tenant(f"{name}-2")
        assert other.id != tenant.id
    [keyed] = [k for k in admin.admin.keys(tenant.id) if k.id == reader.id]
    assert (keyed.name, keyed.scopes, keyed.state) == ("reader", ["jobs:read"], "active")
    assert reader.key.startswith(keyed.prefix)
    assert keyed.created_at == reader.created_at
    assert not hasattr(keyed, "key")  # never the secret
    admin.admin.delete_key(tenant.id, reader.id)
    with Client(url, writer.key) as gone, pytest.raises(ApiError) as revoked:
        gone.kernels()
    assert revoked.value.status == 401
