"""The SDK on the events, history and log routes of a live cluster, sync and async: the feed
of one job (oldest first, resumed after an id), a feed cut mid-stream by a TCP proxy that
resumes with no gap and no duplicate, a job's transitions, attempts and log (whole and
followed to its end), and ``wait`` with its progress callback: a job's progress from the
feed, an array's counts, and polling where the gateway has no feed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import islice

import httpx
import pytest
from stratus_client import (
    FINAL_STATES,
    ApiError,
    ArraySpec,
    AsyncClient,
    Client,
    Event,
    Job,
    JobState,
)

from tests.netfault import TcpProxy
from tests.sdk.conftest import MC

WITHIN_S = 120.0  # tiny jobs end in seconds; this only bounds a hang
LONG = 2_000_000_000  # montecarlo_pi samples: seconds of work, with progress reports between


def until_final(events: Iterator[Event], job_id: str) -> list[Event]:
    """The events up to the one that says ``job_id`` is final."""
    seen = []
    for event in events:
        seen.append(event)
        if event.job_id == job_id and event.state in FINAL_STATES:
            return seen
    raise AssertionError("the feed ended")


def increasing(events: list[Event]) -> bool:
    ids = [int(e.id or "") for e in events]
    return ids == sorted(set(ids))


def test_a_jobs_feed_history_attempts_and_log(client: Client) -> None:
    job = client.submit("montecarlo_pi", params=MC)
    feed = until_final(client.events(job=job.id, after="0"), job.id)
    assert increasing(feed)
    assert {e.job_id for e in feed} == {job.id}
    states = [e.state for e in feed if e.type == "job.state"]
    assert states[-1] == JobState.SUCCEEDED
    assert "RUNNING" in states
    assert all(e.data.get("at") for e in feed)
    # resumed after the first event: the rest, the same, nothing twice
    rest = until_final(client.events(job=job.id, after=feed[0].id), job.id)
    assert [e.id for e in rest] == [e.id for e in feed[1:]]

    transitions = client.job_events(job.id)
    assert [t.state for t in transitions][-1] == JobState.SUCCEEDED
    assert "RUNNING" in [t.state for t in transitions]
    assert [t.at for t in transitions] == sorted(t.at for t in transitions)
    (attempt,) = client.attempts(job.id)
    assert attempt.attempt == 1
    assert attempt.worker == client.get(job.id).worker
    assert attempt.started_at is not None
    assert attempt.finished_at is not None
    assert attempt.outcome is not None
    log = client.log(job.id)
    assert log.endswith("\n")
    assert "SUCCEEDED" in log
    followed = list(client.follow_log(job.id))  # a final job: the whole log, then the end
    assert followed == log.splitlines()


async def test_the_same_from_the_async_client(aclient: AsyncClient) -> None:
    job = await aclient.submit("montecarlo_pi", params=MC)
    feed: list[Event] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in aclient.events(job=job.id, after="0"):
            feed.append(event)
            if event.job_id == job.id and event.state in FINAL_STATES:
                break
    assert increasing(feed)
    assert feed[-1].state == JobState.SUCCEEDED
    transitions = await aclient.job_events(job.id)
    assert transitions[-1].state == JobState.SUCCEEDED
    (attempt,) = await aclient.attempts(job.id)
    assert attempt.outcome is not None
    log = await aclient.log(job.id)
    followed = [line async for line in aclient.follow_log(job.id)]
    assert followed == log.splitlines()
    assert followed


async def test_follow_log_ends_when_the_job_ends(aclient: AsyncClient) -> None:
    """Followed from before it runs: the lines come, and the stream ends with the job."""
    job = await aclient.submit("montecarlo_pi", params=MC)
    async with asyncio.timeout(WITHIN_S):
        lines = [line async for line in aclient.follow_log(job.id)]
    assert (await aclient.get(job.id)).is_final
    assert any("SUCCEEDED" in line for line in lines), lines
    # every line, once; a line may come later than one stamped after it (it was stamped when
    # its transaction began), so the order is the whole log's only once the job has ended
    whole = (await aclient.log(job.id)).splitlines()
    assert sorted(lines) == sorted(whole), (lines, whole)


async def test_a_cut_feed_resumes_with_no_gap_and_no_duplicate(url: str, key: str) -> None:
    """A TCP proxy cuts the feed's connection after its second event: the client opens it
    again after the last id it saw, and the events it gives are exactly those of a feed
    read without a cut. Jobs are submitted past the proxy, three of them after the cut, so
    that their events can only come through the feed's new connection."""
    port = int(url.rsplit(":", 1)[1])
    async with TcpProxy.running(port) as proxy, AsyncClient(url, key) as direct:
        ac = AsyncClient(f"http://127.0.0.1:{proxy.port}", key)
        try:
            jobs = {(await direct.submit("montecarlo_pi", params=MC)).id}
            cut: list[Event] = []
            opens: list[int] = []  # events seen when the stream was (re)opened
            cuts = connections = 0
            ended: set[str] = set()
            async with asyncio.timeout(WITHIN_S):
                # the tenant's whole feed
                async for event in ac.events(after="0", on_open=lambda: opens.append(len(cut))):
                    cut.append(event)
                    if len(cut) == 2:
                        cuts, connections = proxy.cut(), len(proxy.accepted)
                        for _ in range(3):
                            jobs.add((await direct.submit("montecarlo_pi", params=MC)).id)
                    if event.state in FINAL_STATES:
                        ended.add(event.job_id or "")
                    if ended == jobs:
                        break
        finally:
            await ac.aclose()
    assert cuts >= 1
    assert len(proxy.accepted) > connections  # the feed's connection was opened again
    assert opens[0] == 0  # open before the first event ...
    assert len(opens) >= 2  # ... and again after the cut
    assert opens[1] >= 2
    assert len(cut) > 2
    assert increasing(cut)
    with Client(url, key) as c:
        whole = list(islice(c.events(after="0"), len(cut)))
    assert [e.id for e in cut] == [e.id for e in whole]
    assert [e.data for e in cut] == [e.data for e in whole]


async def test_a_cut_feed_resumes_the_same_in_the_sync_client(url: str, key: str) -> None:
    """As above, with ``Client`` (its own reconnect code) in a thread, so that this loop
    keeps the proxy going; the cut is made on the loop."""
    port = int(url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    opens: list[int] = []  # events seen when the stream was (re)opened
    async with TcpProxy.running(port) as proxy:

        async def cut_now() -> tuple[int, int]:
            return proxy.cut(), len(proxy.accepted)

        def follow() -> tuple[list[Event], int, int]:
            with Client(f"http://127.0.0.1:{proxy.port}", key) as c, Client(url, key) as direct:
                jobs = {direct.submit("montecarlo_pi", params=MC).id}
                seen: list[Event] = []
                cuts = connections = 0
                ended: set[str] = set()
                for event in c.events(after="0", on_open=lambda: opens.append(len(seen))):
                    seen.append(event)
                    if len(seen) == 2:
                        cuts, connections = asyncio.run_coroutine_threadsafe(
                            cut_now(), loop
                        ).result()
                        # after the cut: their events can only come through a new connection
                        jobs.update(direct.submit("montecarlo_pi", params=MC).id for _ in range(3))
                    if event.state in FINAL_STATES:
                        ended.add(event.job_id or "")
                    if ended == jobs:
                        return seen, cuts, connections
            raise AssertionError("the feed ended")

        async with asyncio.timeout(WITHIN_S):
            cut, cuts, connections = await asyncio.to_thread(follow)
        assert cuts >= 1
        assert len(proxy.accepted) > connections
    assert opens[0] == 0  # opened before the first event, then again after the cut
    assert len(opens) >= 2
    assert opens[1] >= 2
    assert increasing(cut)
    with Client(url, key) as c:
        whole = list(islice(c.events(after="0"), len(cut)))
    assert [e.id for e in cut] == [e.id for e in whole]


def test_wait_sees_a_long_jobs_progress(client: Client) -> None:
    """A job of a few seconds reports its progress between 0 and 1 on the way (the worker
    writes it at least every 2 s), in order, then ends SUCCEEDED."""
    job = client.submit("montecarlo_pi", params={"samples": LONG, "seed": 2})
    seen: list[Job] = []
    done = client.wait(job.id, timeout=WITHIN_S, on_progress=seen.append)
    assert done.succeeded
    on_the_way = [s.progress for s in seen if s.progress is not None and not s.is_final]
    assert any(0 < p < 1 for p in on_the_way), [(s.state, s.progress) for s in seen]
    assert on_the_way == sorted(on_the_way)
    assert done.assigned_device == "cpu"


def test_wait_follows_an_array_to_its_counts(client: Client) -> None:
    sweep = client.submit(
        "montecarlo_pi", params={"samples": 1000}, array=ArraySpec(size=5, index_param="seed")
    )
    seen: list[Job] = []
    done = client.wait(sweep.id, timeout=WITHIN_S, on_progress=seen.append)
    assert done.state == JobState.SUCCEEDED
    assert seen[-1] == done
    finals = [sum(s.array.counts.get(st, 0) for st in FINAL_STATES) for s in seen if s.array]
    assert finals == sorted(finals)  # an array's counts only grow towards its size
    assert finals[-1] == 5


async def test_async_wait_follows_the_feed_with_progress(aclient: AsyncClient) -> None:
    job = await aclient.submit("montecarlo_pi", params=MC)
    seen: list[Job] = []
    done = await aclient.wait(job.id, timeout=WITHIN_S, on_progress=seen.append)
    assert done.succeeded
    assert seen[-1] == done
    assert [s.is_final for s in seen] == [False] * (len(seen) - 1) + [True]


class WithoutEvents(httpx.HTTPTransport):
    """The real gateway, except that it has no events feed (an older one): 404."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            return httpx.Response(404, json={"status": 404, "title": "Not Found"})
        return super().handle_request(request)


def test_wait_polls_a_gateway_without_the_feed(url: str, key: str) -> None:
    with Client(url, key, transport=WithoutEvents()) as c:
        job = c.submit("montecarlo_pi", params=MC)
        assert c.wait(job.id, timeout=WITHIN_S).succeeded
        with pytest.raises(ApiError) as refused:
            next(iter(c.events()))
    assert refused.value.status == 404
