"""PostgreSQL going away under a migration is not the migration's fault: the datamover gives
the lease back and resumes it once the database answers, instead of failing it (found by the
chaos suite: a PostgreSQL restart made running migrations FAILED when the failure could be
written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import InterfaceError

from services.datamover.runner import Runner
from shared.settings import StorageSettings
from tests.datamover.harness import (
    CHUNK,
    new_tenant,
    payload,
    put,
    running_datamover,
    wait_migration,
)


async def test_a_database_error_under_a_migration_resumes_it_instead_of_failing_it(
    api: httpx.AsyncClient, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = await new_tenant(api)
    data = payload(2 * CHUNK + 99, seed=5)
    await put(api, t, "dbcut/a.bin", data)
    original = Runner._publish
    calls = 0

    async def cut_once(self: Runner, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # what asyncpg raises when PostgreSQL restarts under a query
            raise InterfaceError("UPDATE migrations", {}, ConnectionError("connection was closed"))
        return await original(self, *args)

    monkeypatch.setattr(Runner, "_publish", cut_once)
    async with running_datamover(storage, lease_s=120):  # only a released lease is quick
        r = await api.post(
            "/v1/migrations",
            json={"dataset": "dbcut/a.bin", "to_tier": "archive", "mode": "copy"},
            headers=t.headers,
        )
        assert r.status_code == 202, r.text
        done = await wait_migration(api, t, r.json()["id"], timeout=45)
    assert done["state"] == "SUCCEEDED", done
    assert calls == 2
    assert done["attempts"] == 2
    assert (Path(storage.archive.root) / t.id / "dbcut/a.bin").read_bytes() == data
