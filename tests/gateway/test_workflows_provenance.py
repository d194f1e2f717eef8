"""Provenance of a step's (or any job's) results: a SUCCEEDED job's ``receipt`` and its
outputs' ``produced_by``, written by the database in the transaction that records the job
(migration 0022), here with the worker's own heartbeat and the catalogue's own record."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker.service import SOFTWARE, heartbeat
from shared.db.models import JobAttempt
from shared.jobs.proposals import Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import Finish, admit_pending, finish_attempts, session_fetch, set_job_state
from shared.storage.catalog import record_published
from tests.gateway.array_rows import get
from tests.gateway.conftest import TenantKey
from tests.gateway.test_depends_on import submit

Sessions = async_sessionmaker[AsyncSession]


def npy(values: list[float]) -> bytes:
    out = io.BytesIO()
    np.save(out, np.array(values, dtype=np.float64))
    return out.getvalue()


async def put(client: httpx.AsyncClient, tenant: TenantKey, name: str, data: bytes) -> str:
    r = await client.put(f"/v1/datasets/{name}", content=data, headers=tenant.headers)
    assert r.status_code in (200, 201), r.text
    checksum: str = r.json()["checksum"]
    return checksum


async def test_a_succeeded_job_has_a_receipt_and_its_outputs_name_it(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y, out = f"prov/{run}/x.npy", f"prov/{run}/y.npy", f"prov/{run}/out.npy"
    x_sum = await put(client, tenant, x, npy([1.0, 2.0]))
    y_sum = await put(client, tenant, y, npy([3.0, 4.0]))
    job = await submit(
        client,
        tenant,
        kernel="saxpy",
        params={"a": 2.0},
        inputs={"x": x, "y": y},
        outputs={"y": out},
    )
    jid, tid = uuid.UUID(job["id"]), uuid.UUID(tenant.tenant_id)
    async with sessions() as s, s.begin():
        await heartbeat(session=s, worker="w-prov", device="cpu", concurrency=1, lease_s=60)
        await admit_pending(session_fetch(s), limit=1000)
        assert (await set_job_state(s, jid, Claimed("w-prov", 60))).accepted
    async with sessions() as s, s.begin():  # the record: the output, the job, the attempt
        await record_published(
            session=s,
            tenant_id=tid,
            name=out,
            size=144,
            checksum="xxh3-128:" + "ab" * 16,
            tier="local",
        )
        done = Reported(1, "w-prov", Report(JobState.SUCCEEDED, retryable=False))
        assert (await set_job_state(s, jid, done)).accepted
        await s.execute(
            insert(JobAttempt).values(
                job_id=jid,
                attempt=1,
                tenant_id=tid,
                worker="w-prov",
                outcome="SUCCEEDED",
                cpu_seconds=1.5,
            )
        )
    receipt = (await get(client, tenant, f"/v1/jobs/{jid}"))["receipt"]
    assert receipt == {
        "kernel": "saxpy",
        "kernel_version": SOFTWARE.get("stratus"),
        "params": {"a": 2.0},
        "device": None,  # not dispatched here: set by the dispatch pass
        "inputs": {"x": {"dataset": x, "checksum": x_sum}, "y": {"dataset": y, "checksum": y_sum}},
        "outputs": {"y": {"dataset": out, "checksum": "xxh3-128:" + "ab" * 16}},
        "software": {k: v for k, v in SOFTWARE.items() if k != "stratus"},
        "worker": "w-prov",
        "cpu_seconds": 1.5,
    }
    assert set(receipt["software"]) >= {"numba", "numpy", "python"}
    meta = await get(client, tenant, f"/v1/datasets/{out}?meta=1")
    assert meta["produced_by"] == str(jid)
    assert (await get(client, tenant, f"/v1/datasets/{x}?meta=1"))["produced_by"] is None
    # new bytes from an upload are no job's output
    await put(client, tenant, out, npy([0.0]))
    assert (await get(client, tenant, f"/v1/datasets/{out}?meta=1"))["produced_by"] is None


async def test_a_job_that_did_not_succeed_has_no_receipt(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    job = await submit(client, tenant)
    jid = uuid.UUID(job["id"])
    async with sessions() as s, s.begin():
        assert (await set_job_state(s, jid, Claimed("w-prov", 60))).accepted
    async with sessions() as s, s.begin():
        failed = Reported(1, "w-prov", Report(JobState.FAILED, retryable=False))
        assert (await set_job_state(s, jid, failed)).accepted
    assert (await get(client, tenant, f"/v1/jobs/{jid}"))["receipt"] is None


async def test_the_workers_set_based_record_completes_the_receipt(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    """``finish_attempts`` writes the job's row and its attempt's in one statement: the
    receipt gets the attempt's CPU seconds all the same."""
    job = await submit(client, tenant)
    jid, tid = uuid.UUID(job["id"]), uuid.UUID(tenant.tenant_id)
    async with sessions() as s, s.begin():
        await heartbeat(session=s, worker="w-prov", device="cpu", concurrency=1, lease_s=60)
        assert (await set_job_state(s, jid, Claimed("w-prov", 60))).accepted
    report = Report(JobState.SUCCEEDED, retryable=False, result={"estimate": 3.1}, cpu_seconds=0.25)
    async with sessions() as s, s.begin():
        left = await finish_attempts(
            session_fetch(s), [Finish(jid, tid, 1, report)], worker="w-prov"
        )
        assert left == []
    receipt = (await get(client, tenant, f"/v1/jobs/{jid}"))["receipt"]
    assert (receipt["kernel"], receipt["worker"], receipt["cpu_seconds"]) == (
        "montecarlo_pi",
        "w-prov",
        0.25,
    )
    assert receipt["inputs"] == receipt["outputs"] == {}
