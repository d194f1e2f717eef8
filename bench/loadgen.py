"""HTTP load generators for the pipeline benchmark (asyncio + aiohttp).

``closed_loop``: N requests from C clients, each client sending its next request as soon as
its previous answer arrives (a throughput measurement). ``open_loop``: requests started on a
fixed schedule whatever the answers do (a latency measurement without coordinated omission).

The same generator measures Stratus and its references, so that its own cost (it shares the
machine's cores with the servers) weighs on both sides alike; each result carries the client's
CPU time so that this cost is visible. It is aiohttp's client (its HTTP parser is C): about
0.26 ms of CPU per POST against httpx's 1.8 ms on a 2-core AMD EPYC host (2026-12-07, 3,000
POSTs from 32 connections to a FastAPI endpoint that only answers, the two interleaved twice),
so that the generator, which shares the machine with what it measures, takes about as much of
it as Celery's producer does in the reference (0.5-0.6 ms a task).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

Body = Callable[[int], dict[str, Any]]


@dataclass
class ClosedResult:
    requests: int
    ok: int
    elapsed_s: float
    client_cpu_s: float
    first_start: float  # time.time() of the first request
    statuses: Counter[int | str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a few distinct errors, for the report
    cut_short: bool = False  # the time limit stopped it before all requests were sent

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_cpu_share(self) -> float:
        """The load generator's CPU time per second of the run (1.0 = one core)."""
        return self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class Sent:
    start: float  # time.time() when the request was started
    end: float  # time.time() when its answer (or error) came
    status: int | str
    job_id: str | None
    error: str | None = None  # the exception, when the request failed without an answer


@dataclass
class OpenResult:
    sent: list[Sent]
    elapsed_s: float
    lag_max_s: float  # how late the generator started its most delayed request
    client_cpu_s: float

    @property
    def statuses(self) -> Counter[int | str]:
        return Counter(s.status for s in self.sent)

    @property
    def errors(self) -> list[str]:
        """A few distinct errors, for the report."""
        return list(dict.fromkeys(f"{s.status}: {s.error}" for s in self.sent if s.error))[:5]


# what a request can fail with, short of an answer
ERRORS = (aiohttp.ClientError, TimeoutError)


def _client(base_url: str, headers: dict[str, str], connections: int) -> aiohttp.ClientSession:
    """A session of at most ``connections`` kept-alive connections to ``base_url``."""
    return aiohttp.ClientSession(
        base_url,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=30.0),
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
    )


async def _post(client: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """(status, the JSON answer) for a 2xx, (status, the body's text) otherwise."""
    async with client.post(path, json=body) as r:
        if r.status < 300:
            return r.status, await r.json()
        return r.status, (await r.text())[:300]


async def _get(client: aiohttp.ClientSession, path: str) -> int:
    async with client.get(path) as r:
        await r.read()
        return r.status


async def closed_loop(
    base_url: str,
    path: str,
    headers: dict[str, str],
    body: Body,
    *,
    requests: int,
    clients: int,
    warmup: int = 0,
    collect_ids: bool = False,
    on_start: Callable[[], object] | None = None,
    time_limit_s: float | None = None,
) -> ClosedResult:
    """``requests`` POSTs from ``clients`` concurrent clients (one connection each).

    ``warmup`` requests per client go first, untimed (connections open, caches warm);
    ``on_start`` is called just before the timed part begins. After ``time_limit_s`` no new
    request starts (``requests`` in the result is then the number sent, ``cut_short`` true)."""
    pool = [_client(base_url, headers, 1) for _ in range(clients)]
    statuses: Counter[int | str] = Counter()
    ids: list[str] = []
    errors: dict[str, int] = {}  # each distinct error once, with the first request that had it
    try:
        for i in range(warmup):
            await asyncio.gather(*(_post(c, path, body(-1 - i)) for c in pool))
        next_seq = 0
        stop_at = math.inf

        async def run(client: aiohttp.ClientSession) -> None:
            nonlocal next_seq
            while next_seq < requests and time.perf_counter() < stop_at:
                seq = next_seq
                next_seq += 1
                try:
                    status, answer = await _post(client, path, body(seq))
                except ERRORS as exc:
                    statuses[type(exc).__name__] += 1
                    errors.setdefault(repr(exc), seq)
                    continue
                statuses[status] += 1
                if status >= 300:
                    errors.setdefault(f"{status}: {answer}", seq)
                elif collect_ids:
                    ids.append(str(answer["id"]))

        if on_start is not None:
            on_start()
        cpu0 = time.process_time()
        wall0 = time.time()
        t0 = time.perf_counter()
        if time_limit_s is not None:
            stop_at = t0 + time_limit_s
        await asyncio.gather(*(run(c) for c in pool))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await asyncio.gather(*(c.close() for c in pool))
    ok = sum(n for s, n in statuses.items() if isinstance(s, int) and 200 <= s < 300)
    return ClosedResult(
        next_seq, ok, elapsed, cpu, wall0, statuses, ids, list(errors)[:5], next_seq < requests
    )


async def open_loop(
    base_url: str,
    path: str,
    headers: dict[str, str],
    body: Body,
    *,
    rate: float,
    duration_s: float,
    connections: int = 64,
    on_start: Callable[[], object] | None = None,
) -> OpenResult:
    """Start request i at ``t0 + i / rate`` for ``duration_s`` seconds, whatever the answers
    do; each request's start time is recorded (``time.time()``) before it is sent."""
    total = max(1, round(rate * duration_s))
    sent: list[Sent] = []
    lag_max = 0.0
    async with _client(base_url, headers, connections) as client:
        # Open the connections first so that the schedule does not pay for the handshakes.
        await asyncio.gather(*(_get(client, "/healthz") for _ in range(min(connections, 16))))

        async def one(seq: int) -> None:
            start = time.time()
            try:
                status, answer = await _post(client, path, body(seq))
            except ERRORS as exc:
                sent.append(Sent(start, time.time(), type(exc).__name__, None, repr(exc)))
                return
            if status >= 300:
                sent.append(Sent(start, time.time(), status, None, str(answer)))
                return
            sent.append(Sent(start, time.time(), status, str(answer["id"])))

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        if on_start is not None:
            on_start()
        cpu0 = time.process_time()
        t0 = loop.time()
        for seq in range(total):
            due = t0 + seq / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_max = max(lag_max, loop.time() - due)
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - t0
        cpu = time.process_time() - cpu0
    return OpenResult(sent, elapsed, lag_max, cpu)
