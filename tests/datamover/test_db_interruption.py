"""PostgreSQL going away under a migration is not the migration's fault: the datamover gives
the lease back and resumes it once the database answers, instead of failing it.

The datamover reaches PostgreSQL through a TCP proxy (``tests.netfault``) that cuts its
connection in the middle of the publishing transaction: the rows are locked and the object
is published on the target tier when the statement that moves the dataset to that tier is
half sent and the connection drops. PostgreSQL
rolls the transaction back; the migration must end SUCCEEDED on its second attempt with the
object whole, and the first attempt's half-done publication must have left nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.settings import CommonSettings, StorageSettings
from tests.datamover.harness import (
    CHUNK,
    new_tenant,
    payload,
    put,
    running_datamover,
    wait_migration,
)
from tests.datamover.test_migrations import migrate
from tests.netfault import TcpProxy

# a statement of the publishing transaction that no other step of a copy sends: the dataset
# on its new tier, written after the row and the name are locked and the object published
PUBLISHING = b"UPDATE datasets SET"


@pytest.fixture
async def proxy(settings: CommonSettings) -> AsyncIterator[TcpProxy]:
    async with TcpProxy.running(settings.postgres.port) as proxy:
        yield proxy


async def test_a_connection_cut_mid_transaction_resumes_the_migration_instead_of_failing_it(
    api: httpx.AsyncClient,
    storage: StorageSettings,
    settings: CommonSettings,
    proxy: TcpProxy,
) -> None:
    t = await new_tenant(api)
    data = payload(2 * CHUNK + 99, seed=5)
    await put(api, t, "dbcut/a.bin", data)
    cut = proxy.cut_on(PUBLISHING, after=-len(PUBLISHING) // 2)
    postgres = settings.postgres.model_copy(update={"port": proxy.port})
    # only a released lease is quick to resume: one that ran out would take two minutes
    async with running_datamover(storage, postgres=postgres, lease_s=120):
        started = await migrate(api, t, "dbcut/a.bin", "archive", "copy")
        done = await wait_migration(api, t, started["id"], timeout=45)
    assert cut.is_set()
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 2
    assert done["bytes_done"] == len(data)
    assert (Path(storage.archive.root) / t.id / "dbcut/a.bin").read_bytes() == data
    meta = (await api.get("/v1/datasets/dbcut/a.bin?meta=1", headers=t.headers)).json()
    assert sorted(meta["tiers"]) == ["archive", "local"]  # published once, by the second try
