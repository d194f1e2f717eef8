"""``GET /v1/jobs`` filters (state, kernel, label, created_after/before), and 422 for every
malformed cursor or out-of-range value on the list routes."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job
from shared.problems import PROBLEM_BASE
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}


async def submit(client: httpx.AsyncClient, t: TenantKey, **body: Any) -> str:
    r = await client.post("/v1/jobs", json={**MC, **body}, headers=t.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def listed(client: httpx.AsyncClient, t: TenantKey, params: Any) -> list[str]:
    r = await client.get("/v1/jobs", params=params, headers=t.headers)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["items"]]


async def test_label_filters_must_all_match(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    a = await submit(client, t, labels={"run": "7", "team": "cfd"})
    b = await submit(client, t, labels={"run": "7", "team": "md"})
    await submit(client, t, labels={"run": "8", "team": "cfd"})
    await submit(client, t)
    assert await listed(client, t, {"label": "run:7"}) == [b, a]
    assert await listed(client, t, [("label", "run:7"), ("label", "team:cfd")]) == [a]
    assert await listed(client, t, [("label", "run:7"), ("label", "run:8")]) == []
    assert await listed(client, t, {"label": "run:9"}) == []


async def test_label_values_may_hold_a_colon(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    a = await submit(client, t, labels={"at": "12:30"})
    assert await listed(client, t, {"label": "at:12:30"}) == [a]
    assert await listed(client, t, {"label": "at:12"}) == []


async def test_kernel_and_state_filters(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    mc, stencil, failed = [await submit(client, t) for _ in range(3)]
    async with sessions() as s, s.begin():
        await s.execute(update(Job).where(Job.id == uuid.UUID(stencil)).values(kernel="stencil2d"))
        await s.execute(update(Job).where(Job.id == uuid.UUID(failed)).values(state="FAILED"))
    assert await listed(client, t, {"kernel": "montecarlo_pi"}) == [failed, mc]
    assert await listed(client, t, {"kernel": "stencil2d"}) == [stencil]
    assert await listed(client, t, {"kernel": "matmul"}) == []
    assert await listed(client, t, {"kernel": "montecarlo_pi", "state": "FAILED"}) == [failed]
    assert await listed(client, t, {"kernel": "stencil2d", "state": "FAILED"}) == []


async def test_created_after_and_before(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    ids = [await submit(client, t) for _ in range(3)]
    base = datetime(2026, 5, 1, tzinfo=UTC)
    async with sessions() as s, s.begin():
        for day, job_id in enumerate(ids):
            at = base + timedelta(days=day)
            await s.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(created_at=at))
    assert await listed(client, t, {"created_after": "2026-05-01T12:00:00Z"}) == ids[:0:-1]
    assert await listed(client, t, {"created_before": "2026-05-02T00:00:00Z"}) == ids[:1]
    # Another offset is the same instant: 2026-05-02T02:00+02:00 is 2026-05-02T00:00Z.
    window = {
        "created_after": "2026-05-01T00:00:00Z",
        "created_before": "2026-05-03T02:00:00+02:00",
    }
    assert await listed(client, t, window) == [ids[1]]


async def test_filters_page_with_the_cursor(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    mine = [await submit(client, t, labels={"sweep": "s1"}) for _ in range(5)]
    await submit(client, t, labels={"sweep": "s2"})
    r = await client.get("/v1/jobs?label=sweep:s1&limit=3", headers=t.headers)
    page = r.json()
    assert [j["id"] for j in page["items"]] == mine[:1:-1]
    r = await client.get(
        "/v1/jobs", params={"label": "sweep:s1", "cursor": page["next_cursor"]}, headers=t.headers
    )
    assert [j["id"] for j in r.json()["items"]] == mine[1::-1]
    assert r.json()["next_cursor"] is None


async def test_filters_never_cross_tenants(client: httpx.AsyncClient) -> None:
    t, other = await make_tenant(client), await make_tenant(client)
    await submit(client, other, labels={"shared": "x"})
    assert await listed(client, t, {"label": "shared:x", "kernel": "montecarlo_pi"}) == []


async def test_the_label_filter_uses_the_partial_index(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The list's conditions (a labelled job, not an element of an array) imply the index's
    predicate, so the planner may use it. On a table of the jobs' shape and indexes of its
    own, less the list's index by creation time: the same conditions imply that one's
    predicate too, and on a small table the planner may walk it instead."""
    async with sessions() as s, s.begin():
        await s.execute(
            text("CREATE TEMP TABLE listed (LIKE jobs INCLUDING INDEXES) ON COMMIT DROP")
        )
        defined = text("SELECT indexdef, indexname FROM pg_indexes WHERE tablename = 'listed'")
        rows = (await s.execute(defined)).all()
        indexes: dict[str, str] = {str(d): str(n) for d, n in rows}
        (by_time,) = [n for d, n in indexes.items() if "(tenant_id, created_at, id)" in d]
        (labelled,) = [n for d, n in indexes.items() if "USING gin" in d]
        await s.execute(text(f'DROP INDEX "{by_time}"'))
        await s.execute(text("SET LOCAL enable_seqscan = off"))
        plan = (
            await s.execute(
                text(
                    "EXPLAIN SELECT id FROM listed AS jobs WHERE jobs.labels <> '{}'::jsonb"
                    " AND jobs.array_id IS NULL AND labels @> CAST(:want AS jsonb)"
                ),
                {"want": '{"run": "7"}'},
            )
        ).scalars()
        assert labelled in "\n".join(plan)


def forge(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


BAD_QUERIES = [
    ("label", "run"),  # no colon
    ("label", ":7"),  # empty key
    ("label", "bad key:7"),
    ("label", "k:\u0001"),
    ("kernel", "k" * 101),
    ("kernel", ""),
    ("state", "NOPE"),
    ("created_after", "2026-01-01T00:00:00"),  # no offset
    ("created_after", "99999-01-01T00:00:00Z"),
    ("created_after", "9999-12-31T23:59:59-23:59"),  # no UTC equivalent
    ("created_before", "0001-01-01T00:00:00+23:59"),
    ("created_before", "tomorrow"),
    ("limit", str(10**30)),
    ("limit", "0"),
    ("cursor", forge(["2026-01-01", 1])),
    ("cursor", forge(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())])),
    ("cursor", forge(["2026-01-01T00:00:00", str(uuid.uuid4())])),
    ("cursor", "zz"),
    ("cursor", "\x00"),
    ("cursor", "a" * 300),
]


@pytest.mark.parametrize(("name", "value"), BAD_QUERIES)
async def test_bad_job_list_queries_are_422(
    client: httpx.AsyncClient, tenant: TenantKey, name: str, value: str
) -> None:
    r = await client.get("/v1/jobs", params={name: value}, headers=tenant.headers)
    body = assert_problem(r, 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors
    assert errors[0]["loc"][:2] == ["query", name]


async def test_more_label_filters_than_a_job_has_labels_are_422(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    labels = {"label": [f"k{i}:v" for i in range(65)]}
    r = await client.get("/v1/jobs", params=labels, headers=tenant.headers)
    assert_problem(r, 422)
    labels["label"].pop()
    r = await client.get("/v1/jobs", params=labels, headers=tenant.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path", ["/v1/jobs", "/v1/datasets", "/v1/migrations", "/v1/tenants", "/v1/audit"]
)
@pytest.mark.parametrize(
    "cursor",
    [
        forge(["2026-01-01", 1]),
        forge(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())]),
        forge(["0001-01-01T00:00:00+23:59", str(uuid.uuid4())]),
    ],
)
async def test_every_list_route_refuses_a_malformed_cursor(
    client: httpx.AsyncClient, tenant: TenantKey, path: str, cursor: str
) -> None:
    headers = ADMIN if path in ("/v1/tenants", "/v1/audit") else tenant.headers
    r = await client.get(path, params={"cursor": cursor}, headers=headers)
    body = assert_problem(r, 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert [e["loc"] for e in errors] == [["query", "cursor"]]
    assert body["type"] == PROBLEM_BASE + "validation-failed"


async def test_the_audit_log_takes_a_cursor_whose_marker_is_no_entry_id(
    client: httpx.AsyncClient,
) -> None:
    """Audit entries have BIGINT ids: a cursor with a random UUID (beyond them) pages from its
    time on, instead of failing in the database."""
    cursor = forge([datetime.now(UTC).isoformat(), str(uuid.UUID(int=2**127))])
    r = await client.get("/v1/audit", params={"cursor": cursor, "limit": 1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 1


@pytest.mark.parametrize(
    "path", ["/v1/jobs", "/v1/datasets", "/v1/migrations", "/v1/tenants", "/v1/audit"]
)
async def test_every_list_route_refuses_an_overflowing_limit(
    client: httpx.AsyncClient, tenant: TenantKey, path: str
) -> None:
    headers = ADMIN if path in ("/v1/tenants", "/v1/audit") else tenant.headers
    r = await client.get(path, params={"limit": str(10**30)}, headers=headers)
    assert_problem(r, 422)
