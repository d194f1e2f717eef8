"""The asynchronous client (``httpx.AsyncClient``): the methods of ``Client``, awaited; its
lists are async iterators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import suppress
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from stratus_client import _calls
from stratus_client._calls import DEFAULT_PAGE_SIZE, Call, Params
from stratus_client._config import DEFAULT_TIMEOUT_S, resolve
from stratus_client._events import (
    EVENTS_READ_S,
    KEEP_ALIVE,
    LOG_READ_S,
    READ_AGAIN,
    KeepAlive,
    LogResume,
    SseParser,
    apply,
    next_array_read,
    read_s,
    reconnect_delay,
)
from stratus_client._wait import Deadline, Finishing, poll_delays
from stratus_client.admin import AsyncAdmin
from stratus_client.datasets import AsyncDatasets
from stratus_client.errors import ApiError, WaitTimeout
from stratus_client.models import (
    ArraySpec,
    Attempt,
    Event,
    Job,
    Kernel,
    Migration,
    TenantSelf,
    Transition,
    Usage,
    WebhookSecret,
    Workflow,
)
from stratus_client.retry import RetryEvent, RetryPolicy

T = TypeVar("T")
F = TypeVar("F", bound=Finishing)
Body = Callable[[], bytes | AsyncIterator[bytes]]
KernelList = list[Kernel]  # named here: the class has a method called ``list``
TransitionList = list[Transition]
AttemptList = list[Attempt]


class AsyncClient:
    """A Stratus API client for asyncio. ``base_url`` and ``api_key`` default to ``STRATUS_URL`` and
    ``STRATUS_API_KEY``; ``retry`` says how 429, 503 and failed connections are retried;
    ``transport`` replaces httpx's (a proxy, a test transport). Use it as an async context
    manager, or call ``aclose``. ``datasets`` and ``admin`` hold the dataset and admin methods."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        target = resolve(base_url, api_key)
        self.base_url = target.base_url
        self.retry = retry or RetryPolicy()
        self.page_size = page_size
        self._http = httpx.AsyncClient(
            base_url=target.base_url, headers=target.headers, timeout=timeout, transport=transport
        )
        self.datasets = AsyncDatasets(self)
        self.admin = AsyncAdmin(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- sending ----------------------------------------------------------------------------

    async def _send(
        self, call: Call[Any], *, body: Body | None = None, stream: bool = False
    ) -> httpx.Response:
        """The answer to ``call`` (2xx or 3xx), after the retries ``self.retry`` allows;
        raises ``ApiError`` for the 4xx/5xx that stays. ``body`` makes the request body anew
        for each try. A ``stream`` answer is the caller's to close."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            request = self._http.build_request(
                call.method,
                call.path,
                params=list(call.params) or None,
                json=call.json,
                headers=dict(call.headers),
                content=None if body is None else body(),
                timeout=call.timeout(self._http.timeout),
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(
                    exc,
                    idempotent=call.idempotent,
                    attempt=attempt,
                    elapsed_s=time.monotonic() - started,
                )
                if delay is None:
                    raise
                await self._wait_retry(
                    RetryEvent(call.method, str(request.url), attempt, delay, error=exc)
                )
                continue
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            error = ApiError.from_response(response)
            delay = self.retry.after_status(
                response.status_code,
                error.retry_after,
                attempt=attempt,
                elapsed_s=time.monotonic() - started,
            )
            if delay is None:
                raise error
            event = RetryEvent(call.method, str(request.url), attempt, delay, response.status_code)
            await self._wait_retry(event)

    async def _wait_retry(self, event: RetryEvent) -> None:
        self.retry.notify(event)
        await asyncio.sleep(event.delay_s)

    async def _run(self, call: Call[T]) -> T:
        return call.parse(await self._send(call))

    async def _run_with(self, call: Call[T], body: Body) -> T:
        return call.parse(await self._send(call, body=body))

    async def _items(self, path: str, filters: Params = ()) -> AsyncIterator[dict[str, Any]]:
        """Every item of the list at ``path``, page after page (each asked when needed)."""
        cursor: str | None = None
        while True:
            page = await self._run(_calls.page(path, filters, cursor, self.page_size))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def _snapshots(
        self,
        read: Callable[[], Awaitable[F]],
        what: str,
        timeout: float | None,  # noqa: ASYNC109 - the deadline is the wait's own (Client's too)
    ) -> AsyncIterator[F]:
        deadline = Deadline(timeout)
        for delay in poll_delays():
            seen = await read()
            yield seen
            if seen.is_final:
                return
            wait = deadline.clip(delay)
            if wait is None:
                raise WaitTimeout(what, timeout or 0, seen)
            await asyncio.sleep(wait)

    async def _follow(
        self,
        read: Callable[[], Awaitable[F]],
        what: str,
        timeout: float | None,  # noqa: ASYNC109 - as _snapshots
    ) -> F:
        async for seen in self._snapshots(read, what, timeout):
            if seen.is_final:
                return seen
        raise AssertionError("unreachable")  # pragma: no cover - the last one is final

    # --- kernels and jobs -------------------------------------------------------------------

    async def kernels(self) -> KernelList:
        """The kernels this service runs, with their params' JSON Schema."""
        return await self._run(_calls.kernels())

    async def submit(
        self,
        kernel: str,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        device: str | None = None,
        priority: int | None = None,
        timeout_s: int | None = None,
        max_retries: int | None = None,
        labels: Mapping[str, str] | None = None,
        output_tier: str | None = None,
        array: ArraySpec | Mapping[str, Any] | None = None,
        depends_on: Iterable[Mapping[str, str]] | None = None,
        notify: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job (an array with ``array``). Fields left out take the service's
        defaults; ``depends_on``: ``[{"job": id, "condition": "afterok"}]``; ``notify``:
        ``{"url": "https://...", "events": ["final"]}``; ``extra`` adds body fields this
        client does not name. The submission
        carries an ``Idempotency-Key`` (``idempotency_key``, or a new one), the same on every
        retry: the service creates the job once however often the call is tried."""
        body = _calls.submission(
            kernel,
            params=params,
            inputs=inputs,
            outputs=outputs,
            device=device,
            priority=priority,
            timeout_s=timeout_s,
            max_retries=max_retries,
            labels=labels,
            output_tier=output_tier,
            array=array,
            depends_on=depends_on,
            notify=notify,
            extra=extra,
        )
        call = _calls.submit(body, idempotency_key)
        return await self._run(call)

    async def get(self, job_id: str) -> Job:
        """A job, an array, or an element (``"{array_id}:{index}"``)."""
        return await self._run(_calls.get_job(job_id))

    async def list(
        self,
        *,
        state: str | None = None,
        kernel: str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> AsyncIterator[Job]:
        """The tenant's jobs and arrays (not their elements), newest first, every page;
        ``labels``: each ``key: value`` must match."""
        filters = _calls.job_filters(
            state=state,
            kernel=kernel,
            labels=labels,
            created_after=created_after,
            created_before=created_before,
        )
        async for item in self._items("/v1/jobs", filters):
            yield Job.model_validate(item)

    async def elements(self, array_id: str, *, state: str | None = None) -> AsyncIterator[Job]:
        """The elements of an array in index order, every page."""
        path = f"{_calls.job_path(array_id)}/elements"
        async for item in self._items(path, _calls.job_filters(state=state)):
            yield Job.model_validate(item)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job, or every element of an array that is not final; ``ApiError`` 409
        when it is final already."""
        return await self._run(_calls.cancel(job_id))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as Client.wait: a WaitTimeout
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """The job once it is final (SUCCEEDED, FAILED, CANCELLED or TIMED_OUT); raises
        ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds. ``on_progress`` is
        called with the job at each change on the way, as ``Client.wait``."""
        job: Job | None = None
        async for job in self.watch(job_id, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        assert job is not None  # watch yields at least once
        return job

    async def watch(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as Client.watch
    ) -> AsyncIterator[Job]:
        """The job at each change until it is final (the last one), as ``Client.watch``:
        driven by the job's events, polled on a gateway without them."""
        what = f"job {job_id}"
        deadline = Deadline(timeout)
        try:
            response = await self._open_events(job_id, None, read_s(deadline))
        except ApiError as error:
            if error.status != 404:
                raise
            async for polled in self._snapshots(lambda: self.get(job_id), what, timeout):
                yield polled
            return
        try:
            job = await self.get(job_id)
        except BaseException:
            await response.aclose()
            raise
        if job.array is not None:
            async for counted in self._watch_array(job, response, deadline, what):
                yield counted
            return
        items = self._event_items(job_id, SseParser(), response, deadline)
        try:
            yield job
            while not job.is_final:
                item = await anext(items)
                if deadline.clip(1.0) is None:
                    raise WaitTimeout(what, timeout or 0, job)
                seen = apply(job, item)
                if seen is None:
                    continue
                fresh = await self.get(job_id) if seen is READ_AGAIN else _job(seen)
                if fresh != job:  # a keep-alive's look often finds nothing new
                    job = fresh
                    yield job
        finally:
            await items.aclose()
            await response.aclose()

    async def _watch_array(
        self, job: Job, response: httpx.Response, deadline: Deadline, what: str
    ) -> AsyncIterator[Job]:
        """``watch`` for an array, as ``Client``'s: its stream read by a task of its own,
        the counts read again soon after an event, or once the stream has been quiet."""
        items: asyncio.Queue[Event | KeepAlive | BaseException] = asyncio.Queue()

        async def pump() -> None:
            stream = self._event_items(job.id, SseParser(), response, deadline)
            try:
                async for item in stream:
                    items.put_nowait(item)
            except Exception as error:  # an API error opening it again: the reader's
                items.put_nowait(error)
            finally:
                await stream.aclose()

        task = asyncio.create_task(pump())
        try:
            yield job
            last_read, stale = time.monotonic(), False
            while not job.is_final:
                wait = max(0.0, next_array_read(last_read, stale) - time.monotonic())
                try:
                    item: Event | KeepAlive | BaseException | None = await asyncio.wait_for(
                        items.get(), wait
                    )
                except TimeoutError:
                    item = None
                if isinstance(item, BaseException):
                    raise item
                if deadline.clip(1.0) is None:
                    raise WaitTimeout(what, deadline.timeout or 0, job)
                seen = None if item is None else apply(job, item)
                if isinstance(seen, Job):  # its counts, from the event: no read
                    if seen != job:
                        job = seen
                        yield job
                    continue
                if seen is not None:
                    stale = True
                if time.monotonic() < next_array_read(last_read, stale):
                    continue
                fresh = await self.get(job.id)
                last_read, stale = time.monotonic(), False
                if fresh != job:
                    job = fresh
                    yield job
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await response.aclose()

    # --- events, history, logs --------------------------------------------------------------

    async def events(
        self,
        job: str | None = None,
        after: str | None = None,
        *,
        on_open: Callable[[], object] | None = None,
    ) -> AsyncIterator[Event]:
        """The tenant's events as they happen, without end, as ``Client.events``: a dropped
        connection is opened again after the last event seen; ``on_open`` is called each
        time the stream is open, before its first event."""
        parser = SseParser(last_id=after)
        response = await self._open_events(job, after, EVENTS_READ_S)
        if on_open is not None:
            on_open()
        reopened = (lambda _response: on_open()) if on_open is not None else None
        items = self._event_items(job, parser, response, None, reopened)
        try:
            async for item in items:
                if isinstance(item, Event):
                    yield item
        finally:
            await items.aclose()
            await response.aclose()

    async def _open_events(self, job: str | None, after: str | None, read: float) -> httpx.Response:
        return await self._send(_calls.events(job, after, read), stream=True)

    async def _event_items(
        self,
        job: str | None,
        parser: SseParser,
        response: httpx.Response,
        deadline: Deadline | None,
        opened: Callable[[httpx.Response], object] | None = None,
    ) -> AsyncGenerator[Event | KeepAlive, None]:
        """What the stream brings from ``response`` on; after a drop, a ``KEEP_ALIVE`` and
        the stream opened again after ``parser.last_id`` (given to ``opened``)."""
        drops = 0
        while True:
            try:
                async for line in response.aiter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        drops = 0
                        yield item
            except httpx.TransportError:
                pass  # dropped, or silent past its read timeout
            finally:
                await response.aclose()
            yield KEEP_ALIVE
            drops += 1
            await asyncio.sleep(reconnect_delay(drops))
            response = await self._open_events(job, parser.last_id, read_s(deadline))
            if opened is not None:
                opened(response)

    async def job_events(self, job_id: str) -> TransitionList:
        """The job's changes of state, oldest first."""
        return await self._run(_calls.job_events(job_id))

    async def attempts(self, job_id: str) -> AttemptList:
        """The job's tries: worker, device, times, CPU and GPU seconds, outcome, error."""
        return await self._run(_calls.attempts(job_id))

    async def log(self, job_id: str) -> str:
        """The job's log so far (every attempt), as text."""
        return await self._run(_calls.log(job_id))

    async def follow_log(self, job_id: str) -> AsyncIterator[str]:
        """The job's log line by line as it is written, ending once the job is final, as
        ``Client.follow_log``: a dropped connection is opened again, and none of its lines
        is lost or given twice."""
        given: dict[str, int] = {}
        drops = 0
        while True:
            response = await self._send(_calls.follow_log(job_id, LOG_READ_S), stream=True)
            resume = LogResume.after(given)
            try:
                async for line in response.aiter_lines():
                    if resume.new(line):
                        given[line] = given.get(line, 0) + 1
                        drops = 0
                        yield line
                return
            except httpx.TransportError:
                drops += 1
            finally:
                await response.aclose()
            await asyncio.sleep(reconnect_delay(drops))

    # --- workflows and webhooks -------------------------------------------------------------

    async def submit_workflow(
        self,
        name: str,
        steps: Mapping[str, Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Workflow:
        """Submit a named graph of jobs in one transaction: ``steps`` maps each step's name
        to a submission (as ``POST /v1/jobs``'s body) whose ``depends_on`` may name other
        steps (``{"step": name, "condition": "afterok"}``). A cycle or an unknown step name
        is an ``ApiError`` 422, and nothing is created. It carries an ``Idempotency-Key``
        (``idempotency_key``, or a new one), the same on every retry."""
        return await self._run(_calls.submit_workflow(name, steps, idempotency_key))

    async def get_workflow(self, workflow_id: str) -> Workflow:
        """A workflow: its state, each step's job id, its steps by state."""
        return await self._run(_calls.get_workflow(workflow_id))

    async def list_workflows(self) -> AsyncIterator[Workflow]:
        """The tenant's workflows, newest first, every page (each asked when needed)."""
        async for item in self._items("/v1/workflows"):
            yield Workflow.model_validate(item)

    async def cancel_workflow(self, workflow_id: str) -> Workflow:
        """Cancel every step that is not final; ``ApiError`` 409 when it is final already."""
        return await self._run(_calls.cancel_workflow(workflow_id))

    async def wait_workflow(
        self,
        workflow_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as Client.wait_workflow
    ) -> Workflow:
        """The workflow once it is final, as ``Client.wait_workflow``: read again at each
        ``workflow.state`` event, polled on a gateway without events."""
        what = f"workflow {workflow_id}"
        deadline = Deadline(timeout)
        try:
            response = await self._open_events(workflow_id, None, read_s(deadline))
        except ApiError as error:
            if error.status != 404:
                raise
            return await self._follow(lambda: self.get_workflow(workflow_id), what, timeout)
        items = self._event_items(workflow_id, SseParser(), response, deadline)
        try:
            flow = await self.get_workflow(workflow_id)
            while not flow.is_final:
                item = await anext(items)
                if deadline.clip(1.0) is None:
                    raise WaitTimeout(what, timeout or 0, flow)
                if isinstance(item, KeepAlive) or item.type == "workflow.state":
                    flow = await self.get_workflow(workflow_id)
            return flow
        finally:
            await items.aclose()
            await response.aclose()

    async def rotate_webhook_secret(self) -> WebhookSecret:
        """A new secret for the ``Stratus-Signature`` of every webhook delivery from now on
        (the old one stops signing). Shown only in this answer: keep it."""
        return await self._run(_calls.rotate_webhook_secret())

    # --- migrations, usage, tenant ----------------------------------------------------------

    async def migrate(
        self,
        dataset: str,
        to_tier: str,
        mode: str = "copy",
        *,
        idempotency_key: str | None = None,
    ) -> Migration:
        """Copy (or ``mode="move"``) a dataset to another storage tier; the copy is verified
        before it is published. Follow it with ``wait_migration``."""
        return await self._run(_calls.migrate(dataset, to_tier, mode, idempotency_key))

    async def get_migration(self, migration_id: str) -> Migration:
        return await self._run(_calls.get_migration(migration_id))

    async def migrations(
        self, *, state: str | None = None, dataset: str | None = None
    ) -> AsyncIterator[Migration]:
        filters = _calls.query(state=state, dataset=dataset)
        async for item in self._items("/v1/migrations", filters):
            yield Migration.model_validate(item)

    async def wait_migration(
        self,
        migration_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as Client.wait_migration
    ) -> Migration:
        """The migration once SUCCEEDED or FAILED; ``WaitTimeout`` after ``timeout``."""
        return await self._follow(
            lambda: self.get_migration(migration_id), f"migration {migration_id}", timeout
        )

    def watch_migration(
        self,
        migration_id: str,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Migration]:
        """The migration at each look until it is final (the last one)."""
        read = partial(self.get_migration, migration_id)
        return self._snapshots(read, f"migration {migration_id}", timeout)

    async def usage(self) -> Usage:
        """CPU and GPU seconds, jobs by state, storage and bytes moved of the tenant."""
        return await self._run(_calls.usage())

    async def tenant(self) -> TenantSelf:
        """The caller's tenant: quotas, weight and the use of each quota now."""
        return await self._run(_calls.tenant())


def _job(seen: object) -> Job:
    assert isinstance(seen, Job)
    return seen
