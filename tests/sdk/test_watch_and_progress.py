"""What a progress display needs from the SDK, sync and async: a job, an array and a migration
seen at each look until final, the bytes of an upload and a download as they go; and the
admin's view of the worker pools and dead letters."""

from __future__ import annotations

from pathlib import Path

import pytest
from stratus_client import ApiError, ArraySpec, AsyncClient, Client, JobState

from tests.conftest import ADMIN_KEY
from tests.sdk.conftest import MC


async def test_watch_ends_with_the_final_job(client: Client, aclient: AsyncClient) -> None:
    job = client.submit("montecarlo_pi", params=MC)
    seen = list(client.watch(job.id, timeout=60))
    assert [s.is_final for s in seen] == [False] * (len(seen) - 1) + [True]
    assert seen[-1].state == JobState.SUCCEEDED
    assert {s.id for s in seen} == {job.id}

    sweep = await aclient.submit(
        "montecarlo_pi", params={"samples": 1000}, array=ArraySpec(size=4, index_param="seed")
    )
    aseen = [s async for s in aclient.watch(sweep.id, timeout=60)]
    last = aseen[-1]
    assert last.state == JobState.SUCCEEDED
    assert last.array is not None
    assert last.array.counts.get("SUCCEEDED") == 4
    assert all(not s.is_final for s in aseen[:-1])
    # a final job is seen once, at once
    assert [s.state for s in client.watch(job.id)] == [JobState.SUCCEEDED]


async def test_watch_migration(client: Client, aclient: AsyncClient) -> None:
    client.datasets.put_bytes("w/a.bin", b"a" * 5000)
    copy = client.migrate("w/a.bin", "archive")
    seen = list(client.watch_migration(copy.id, timeout=60))
    assert seen[-1].state == "SUCCEEDED"
    assert seen[-1].bytes_done == 5000
    assert all(not s.is_final for s in seen[:-1])
    again = [m.state async for m in aclient.watch_migration(copy.id, timeout=60)]
    assert again == ["SUCCEEDED"]


async def test_transfers_report_their_bytes(
    client: Client, aclient: AsyncClient, tmp_path: Path
) -> None:
    source = tmp_path / "in.bin"
    size = 3 * 2**20 + 5  # more than one chunk
    source.write_bytes(b"x" * size)
    sent: list[int] = []
    client.datasets.put_file("p/one.bin", source, progress=sent.append)
    assert sent[0] == 0
    assert sent[-1] == size
    assert sent == sorted(sent)
    assert len(sent) > 2
    got: list[int] = []
    client.datasets.get_file("p/one.bin", tmp_path / "out.bin", progress=got.append)
    assert got[-1] == size
    assert got == sorted(got)
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()

    asent: list[int] = []
    await aclient.datasets.put_file("p/two.bin", source, progress=asent.append)
    assert (asent[0], asent[-1]) == (0, size)
    agot: list[int] = []
    await aclient.datasets.get_file("p/two.bin", tmp_path / "aout.bin", progress=agot.append)
    assert agot[-1] == size


async def test_admin_pools_and_dead_letters(admin: Client, aclient: AsyncClient, url: str) -> None:
    pools = {p.pool: p for p in admin.admin.pools()}
    assert set(pools) == {"cpu", "cuda"}
    assert pools["cpu"].live_workers == 1  # the cluster's one worker
    assert pools["cuda"].live_workers == 0
    queues = admin.admin.dead_letters(peek=0)
    assert queues
    assert all(q.dead_letter_queue == f"{q.queue}.dlq" for q in queues)
    assert all(q.oldest == [] for q in queues)
    async with AsyncClient(url, ADMIN_KEY) as aadmin:
        assert {p.pool for p in await aadmin.admin.pools()} == {"cpu", "cuda"}
        assert len(await aadmin.admin.dead_letters()) == len(queues)
    with pytest.raises(ApiError) as info:
        await aclient.admin.pools()  # a tenant key
    assert info.value.status == 403
