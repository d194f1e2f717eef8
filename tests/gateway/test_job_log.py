"""``GET /v1/jobs/{id}/log``: text/plain, one line each ``<ISO time> [attempt N] <text>`` in
time order, every attempt: the transitions, the lines the worker wrote (``job_log``, from its
progress flush), each attempt's end with its error. ``?follow=1`` streams until the job is
final. Another tenant's job: 404."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.jobs import history
from services.worker import progress
from shared.db.raw import raw_connection
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from tests.gateway.array_rows import stored_array
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_attempts import claimed, element_ids, queued, recorded
from tests.gateway.test_jobs_api import assert_problem

Sessions = async_sessionmaker[AsyncSession]
LINE = re.compile(r"^(\S+Z) \[attempt (\d+)\] (.+)$")


async def log_of(client: httpx.AsyncClient, tenant: TenantKey, job_id: str) -> list[str]:
    r = await client.get(f"/v1/jobs/{job_id}/log", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text.splitlines()


def parsed(lines: list[str]) -> list[tuple[datetime, int, str]]:
    out = []
    for text in lines:
        found = LINE.match(text)
        assert found is not None, text
        out.append((datetime.fromisoformat(found[1]), int(found[2]), found[3]))
    return out


async def worker_lines(
    sessions: Sessions,
    tenant: TenantKey,
    job_id: uuid.UUID,
    line: str = "staging out 1 output(s) to tier 'archive'",
    value: float | None = 0.5,
) -> None:
    """A progress value and a staging line, through the worker's flush."""
    tracker = progress.Tracker(min_age_s=0)  # written at once, as a job of a few flushes
    tracker.start(job_id, uuid.UUID(tenant.tenant_id), 1)
    tracker.line(job_id, line)
    if value is not None:
        tracker.progress(job_id, value)
    async with raw_connection(sessions.kw["bind"]) as conn:
        await progress.write(conn.fetch, tracker.take(), worker="w1")


async def test_a_failed_jobs_log_has_its_transitions_lines_and_error_in_time_order(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    jid = await queued(sessions, tenant, max_retries=1)
    first = await claimed(sessions, jid)
    await worker_lines(sessions, tenant, jid)
    crash = Report(JobState.FAILED, error="the kernel's process crashed (SIGSEGV)", retryable=True)
    await recorded(sessions, first, crash)  # retried
    second = await claimed(sessions, jid)
    boom = Report(JobState.FAILED, error="ValueError: boom", retryable=False, cpu_seconds=0.5)
    await recorded(sessions, second, boom)

    lines = parsed(await log_of(client, tenant, str(jid)))
    assert [at for at, _, _ in lines] == sorted(at for at, _, _ in lines)
    texts = [(attempt, text) for _, attempt, text in lines]
    assert (1, "QUEUED -> RUNNING on w1") in texts
    assert (1, "staging out 1 output(s) to tier 'archive'") in texts
    assert (1, "progress 50%") in texts
    ended = [(a, t) for a, t in texts if t.startswith("attempt ended")]
    assert len(ended) == 2
    assert ended[0][0] == 1
    assert "FAILED" in ended[0][1]
    assert "error: the kernel's process crashed (SIGSEGV)" in ended[0][1]
    assert ended[1][0] == 2
    assert ended[1][1].endswith("error: ValueError: boom")
    assert (2, "RUNNING -> FAILED on w1: ValueError: boom") in texts
    assert texts.index((1, "QUEUED -> RUNNING on w1")) < texts.index((1, "progress 50%"))


async def test_follow_streams_until_the_job_is_final(
    client: httpx.AsyncClient,
    sessions: Sessions,
    tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stream waits for the worker's last lines after the job's end; on a busy CI host the
    # test's own write of them came later than the 3 s it waits in service. The wait is the
    # behaviour under test, not its length.
    monkeypatch.setattr(history, "LATE_LINES_S", 10.0)
    jid = await queued(sessions, tenant)
    claim = await claimed(sessions, jid)
    follow = asyncio.create_task(
        client.get(f"/v1/jobs/{jid}/log", params={"follow": 1}, headers=tenant.headers)
    )
    await asyncio.sleep(history.FOLLOW_POLL_S * 2)
    assert not follow.done()  # the job runs: the stream goes on
    await worker_lines(sessions, tenant, jid)
    done = Report(JobState.SUCCEEDED, result={}, cpu_seconds=0.1, wall_seconds=0.1)
    await recorded(sessions, claim, done)
    # the worker's next flush, after the record: its last lines still reach the stream
    await worker_lines(sessions, tenant, jid, "staged out in 0.1 s", None)
    r = await asyncio.wait_for(follow, timeout=history.LATE_LINES_S + 30)
    assert r.status_code == 200, r.text
    texts = [text for _, _, text in parsed(r.text.splitlines())]
    assert texts[0] == "QUEUED -> RUNNING on w1"
    assert "progress 50%" in texts
    assert "RUNNING -> SUCCEEDED on w1" in texts
    assert texts[-1] == "staged out in 0.1 s"
    # a final job's follow is its log, at once: the same lines (those that came in one
    # read of the stream are in time order; across reads, in the order they were written)
    again = await client.get(f"/v1/jobs/{jid}/log", params={"follow": 1}, headers=tenant.headers)
    assert sorted(again.text.splitlines()) == sorted(r.text.splitlines())


async def test_an_elements_log_by_its_id_and_another_tenants_is_404(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    array_id = await stored_array(sessions, tenant, 2, materialised=1)
    [element] = await element_ids(sessions, array_id)
    await claimed(sessions, element)
    texts = [t for _, _, t in parsed(await log_of(client, tenant, f"{array_id}:0"))]
    assert "QUEUED -> RUNNING on w1" in texts
    assert await log_of(client, tenant, f"{array_id}:1") == []  # not materialised yet
    other = await make_tenant(client)
    for path in (f"/v1/jobs/{array_id}:0/log", f"/v1/jobs/{element}/log"):
        assert_problem(await client.get(path, headers=other.headers), 404)
    assert_problem(await client.get(f"/v1/jobs/{uuid.uuid4()}/log", headers=tenant.headers), 404)
