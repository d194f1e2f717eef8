"""An array run in chunks, followed by the SDK: its counts come with its progress events (one
per chunk flush), so ``watch`` shows them moving without reading the array for each, sync
and async; the last snapshot is the final array."""

from __future__ import annotations

from typing import Any

import pytest
from stratus_client import ArraySpec, AsyncClient, Client, Job, JobState

SIZE = 400


def finished(job: Job) -> int:
    assert job.array is not None
    c = job.array.counts
    return sum(c.get(s, 0) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"))


def test_watch_moves_an_arrays_counts_from_its_events(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    get = client.get

    def counted(job_id: str) -> Job:
        reads.append(job_id)
        return get(job_id)

    monkeypatch.setattr(client, "get", counted)
    sweep = client.submit(
        "montecarlo_pi", params={"samples": 1000}, array=ArraySpec(size=SIZE, index_param="seed")
    )
    seen = list(client.watch(sweep.id, timeout=120))
    last = seen[-1]
    assert last.state == JobState.SUCCEEDED
    assert last.array is not None
    assert last.array.counts.get("SUCCEEDED") == SIZE
    done = [finished(s) for s in seen]
    assert done == sorted(done)  # never backwards
    between = [d for d in done if 0 < d < SIZE]
    assert between, done  # counts seen moving on the way
    # the snapshots on the way outnumber the reads: most came from the events themselves
    assert len(reads) < len(seen), (len(reads), len(seen), done)


async def test_async_watch_moves_an_arrays_counts_from_its_events(
    aclient: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    get = aclient.get

    async def counted(job_id: str) -> Any:
        reads.append(job_id)
        return await get(job_id)

    monkeypatch.setattr(aclient, "get", counted)
    sweep = await aclient.submit(
        "montecarlo_pi", params={"samples": 1000}, array=ArraySpec(size=SIZE, index_param="seed")
    )
    seen = [s async for s in aclient.watch(sweep.id, timeout=120)]
    assert seen[-1].state == JobState.SUCCEEDED
    done = [finished(s) for s in seen]
    assert done == sorted(done)
    assert any(0 < d < SIZE for d in done), done
    assert len(reads) < len(seen), (len(reads), len(seen), done)
