"""Following a job's log through a cut connection, and an array through its event stream,
sync and async, on a live cluster.

A followed log opened again starts from the job's first line in time order, which need not
be the order the first connection gave them in: the SDK skips what it gave by each line's
text (and count), so the lines given are the whole log, each once. An array is followed by
its stream (``/v1/events?job=``), open for the whole wait, its counts read again on its
events and when the stream is quiet; the thread that reads the stream ends with the wait."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
from stratus_client import FINAL_STATES, ArraySpec, AsyncClient, Client, Job, JobState
from stratus_client._events import ARRAY_READ_S, QUIET_READ_S, LogResume, next_array_read

from tests.netfault import TcpProxy
from tests.sdk.test_events import WithoutEvents

WITHIN_S = 120.0  # bounds a hang only
# montecarlo_pi samples: about 9 s of work on a quiet 2-core host (600 million took 0.7 s),
# with progress lines between
LONG = 8_000_000_000
SWEEP: dict[str, Any] = {"samples": 1000}


def test_a_resumed_log_skips_what_was_given_by_text_and_count() -> None:
    given = {"t2 b": 1, "t1 a": 1, "t3 x": 1}  # given out of time order, x once
    resume = LogResume.after(given)
    stream = ["t1 a", "t2 b", "t3 x", "t3 x", "t4 c"]  # from the first line, x twice
    assert [line for line in stream if resume.new(line)] == ["t3 x", "t4 c"]
    assert given == {"t2 b": 1, "t1 a": 1, "t3 x": 1}  # the caller's count is its own


def test_an_array_is_read_soon_after_an_event_else_when_quiet() -> None:
    assert next_array_read(10.0, stale=True) == 10.0 + ARRAY_READ_S
    assert next_array_read(10.0, stale=False) == 10.0 + QUIET_READ_S
    assert ARRAY_READ_S < QUIET_READ_S


async def test_a_log_cut_mid_stream_loses_and_repeats_no_line(url: str, key: str) -> None:
    """A TCP proxy cuts the followed log's connection after its second line, while the job
    still runs: the lines given, with those of the connection opened again, are the job's
    whole log, each once."""
    port = int(url.rsplit(":", 1)[1])
    async with TcpProxy.running(port) as proxy, AsyncClient(url, key) as direct:
        job = await direct.submit("montecarlo_pi", params={"samples": LONG, "seed": 3})
        ac = AsyncClient(f"http://127.0.0.1:{proxy.port}", key)
        lines: list[str] = []
        state_at_cut = None
        try:
            async with asyncio.timeout(WITHIN_S):
                async for line in ac.follow_log(job.id):
                    lines.append(line)
                    if len(lines) == 2:
                        state_at_cut = (await direct.get(job.id)).state
                        assert proxy.cut() == 1
        finally:
            await ac.aclose()
        assert len(proxy.accepted) == 2  # opened once more after the cut
        whole = (await direct.log(job.id)).splitlines()
        final = await direct.get(job.id)
    assert state_at_cut is not None
    assert state_at_cut != JobState.SUCCEEDED
    assert final.succeeded
    assert Counter(lines) == Counter(whole), (lines, whole)
    assert len(lines) > 2


class CutFirstLog(httpx.HTTPTransport):
    """The real gateway, except that the first followed log's body breaks after its first
    chunk (a connection lost mid-stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.logs = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/log") and request.url.params.get("follow"):
            self.logs += 1
            if self.logs == 1:
                response.stream = _Breaking(response.stream)
        return response


class _Breaking(httpx.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield chunk
            raise httpx.ReadError("cut by the test")

    def close(self) -> None:
        self.inner.close()


def test_the_sync_client_resumes_a_cut_log_the_same(url: str, key: str) -> None:
    transport = CutFirstLog()
    with Client(url, key, transport=transport) as c:
        job = c.submit("montecarlo_pi", params={"samples": LONG, "seed": 4})
        lines = list(c.follow_log(job.id))
        whole = c.log(job.id).splitlines()
        assert c.get(job.id).succeeded
    assert transport.logs >= 2
    assert Counter(lines) == Counter(whole), (lines, whole)


class Recording(httpx.HTTPTransport):
    """The real gateway; records each request's path and query, and each close of a
    response's body, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        what = f"{request.url.path}?{request.url.query.decode()}"
        self.seen.append(("open", what))
        response = super().handle_request(request)
        response.stream = _Recorded(response.stream, lambda: self.seen.append(("close", what)))
        return response


class _Recorded(httpx.SyncByteStream):
    def __init__(self, inner: Any, on_close: Any) -> None:
        self.inner, self.on_close = inner, on_close

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        self.on_close()
        self.inner.close()


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stratus-events"]


def test_watch_follows_an_array_on_its_stream(url: str, key: str) -> None:
    """The array's stream is opened before the first read and closed only after the last;
    the counts only grow; the stream's reader thread is gone once the wait returns."""
    transport = Recording()
    with Client(url, key, transport=transport) as c:
        sweep = c.submit("montecarlo_pi", params=SWEEP, array=ArraySpec(size=6, index_param="seed"))
        seen = list(c.watch(sweep.id, timeout=WITHIN_S))
    assert seen[-1].state == JobState.SUCCEEDED
    assert seen[-1].array is not None
    assert seen[-1].array.counts.get("SUCCEEDED") == 6
    done = [sum(j.array.counts.get(s, 0) for s in FINAL_STATES) for j in seen if j.array]
    assert done == sorted(done)
    stream = f"/v1/events?job={sweep.id}"
    reads = [i for i, (kind, what) in enumerate(transport.seen) if what == f"/v1/jobs/{sweep.id}?"]
    opened = transport.seen.index(("open", stream))
    closed = transport.seen.index(("close", stream))
    assert opened < reads[0]
    assert closed > max(reads), transport.seen  # open for the whole wait
    assert transport.seen.count(("open", stream)) == 1  # never opened again
    assert not _readers()


async def test_async_watch_follows_an_array_on_its_stream(aclient: AsyncClient) -> None:
    sweep = await aclient.submit(
        "montecarlo_pi", params=SWEEP, array=ArraySpec(size=5, index_param="seed")
    )
    async with asyncio.timeout(WITHIN_S):
        seen = [j async for j in aclient.watch(sweep.id)]
    assert seen[-1].state == JobState.SUCCEEDED
    assert all(not j.is_final for j in seen[:-1])
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in tasks if "pump" in repr(t.get_coro())]


def test_wait_workflow_reads_it_on_its_events(url: str, key: str) -> None:
    """The workflow's stream is open for the whole wait and the workflow is read once, then
    at each of its ``workflow.state`` events (RUNNING, then its end), not polled."""
    transport = Recording()
    steps: dict[str, dict[str, Any]] = {
        "a": {"kernel": "montecarlo_pi", "params": SWEEP},
        "b": {
            "kernel": "montecarlo_pi",
            "params": SWEEP,
            "depends_on": [{"step": "a", "condition": "afterok"}],
        },
    }
    with Client(url, key, transport=transport) as c:
        flow = c.submit_workflow("two", steps)
        done = c.wait_workflow(flow.id, timeout=WITHIN_S)
    assert done.state == "SUCCEEDED"
    stream = f"/v1/events?job={flow.id}"
    reads = [
        i for i, seen in enumerate(transport.seen) if seen == ("open", f"/v1/workflows/{flow.id}?")
    ]
    assert transport.seen.count(("open", stream)) == 1
    # the first read, the stream's opening comment (a keep-alive: a safety read), RUNNING,
    # the end; a poll reads it every 0.05 s at first
    assert 1 <= len(reads) <= 4, transport.seen
    assert transport.seen.index(("close", stream)) > max(reads)


async def test_async_wait_workflow_the_same(aclient: AsyncClient) -> None:
    flow = await aclient.submit_workflow(
        "one", {"only": {"kernel": "montecarlo_pi", "params": SWEEP}}
    )
    done = await aclient.wait_workflow(flow.id, timeout=WITHIN_S)
    assert done.state == "SUCCEEDED"
    assert done.is_final


def test_wait_workflow_polls_a_gateway_without_events(url: str, key: str) -> None:
    with Client(url, key, transport=WithoutEvents()) as c:
        flow = c.submit_workflow("polled", {"only": {"kernel": "montecarlo_pi", "params": SWEEP}})
        assert c.wait_workflow(flow.id, timeout=WITHIN_S).state == "SUCCEEDED"


async def test_an_arrays_watch_outlives_a_cut_stream(url: str, key: str) -> None:
    """A TCP proxy cuts every connection of the watch (its stream among them) once the
    array runs: the sync client's reader thread opens the stream again, and the watch ends
    with the array's final counts; the thread is gone after it."""
    port = int(url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    async with TcpProxy.running(port) as proxy:

        async def cut_now() -> int:
            return proxy.cut()

        def follow() -> tuple[list[Job], int]:
            cuts = 0
            with Client(f"http://127.0.0.1:{proxy.port}", key) as c:
                sweep = c.submit(
                    "montecarlo_pi",
                    params={"samples": LONG // 4},
                    array=ArraySpec(size=4, index_param="seed"),
                )
                seen: list[Job] = []
                for job in c.watch(sweep.id, timeout=WITHIN_S):
                    seen.append(job)
                    if job.state == JobState.RUNNING and not cuts:
                        cuts = asyncio.run_coroutine_threadsafe(cut_now(), loop).result()
            return seen, cuts

        async with asyncio.timeout(WITHIN_S):
            seen, cuts = await asyncio.to_thread(follow)
    assert cuts >= 1
    assert seen[-1].state == JobState.SUCCEEDED
    assert seen[-1].array is not None
    assert seen[-1].array.counts.get("SUCCEEDED") == 4
    assert not _readers()
