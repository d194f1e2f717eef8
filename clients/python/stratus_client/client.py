"""The synchronous client (``httpx.Client``)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
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
from stratus_client.admin import Admin
from stratus_client.datasets import Datasets
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
Body = Callable[[], bytes | Iterator[bytes]]
KernelList = list[Kernel]  # named here: the class has a method called ``list``
TransitionList = list[Transition]
AttemptList = list[Attempt]


class Client:
    """A Stratus API client. ``base_url`` and ``api_key`` default to ``STRATUS_URL`` and
    ``STRATUS_API_KEY``; ``retry`` says how 429, 503 and failed connections are retried;
    ``transport`` replaces httpx's (a proxy, a test transport). Use it as a context manager,
    or call ``close``. ``datasets`` and ``admin`` hold the dataset and admin methods."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        target = resolve(base_url, api_key)
        self.base_url = target.base_url
        self.retry = retry or RetryPolicy()
        self.page_size = page_size
        self._http = httpx.Client(
            base_url=target.base_url, headers=target.headers, timeout=timeout, transport=transport
        )
        self.datasets = Datasets(self)
        self.admin = Admin(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sending ----------------------------------------------------------------------------

    def _send(
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
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(
                    exc,
                    idempotent=call.idempotent,
                    attempt=attempt,
                    elapsed_s=time.monotonic() - started,
                )
                if delay is None:
                    raise
                self._wait_retry(
                    RetryEvent(call.method, str(request.url), attempt, delay, error=exc)
                )
                continue
            if response.status_code < 400:
                return response
            response.read()
            response.close()
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
            self._wait_retry(event)

    def _wait_retry(self, event: RetryEvent) -> None:
        self.retry.notify(event)
        time.sleep(event.delay_s)

    def _run(self, call: Call[T]) -> T:
        return call.parse(self._send(call))

    def _run_with(self, call: Call[T], body: Body) -> T:
        return call.parse(self._send(call, body=body))

    def _items(self, path: str, filters: Params = ()) -> Iterator[dict[str, Any]]:
        """Every item of the list at ``path``, page after page (each asked when needed)."""
        cursor: str | None = None
        while True:
            page = self._run(_calls.page(path, filters, cursor, self.page_size))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _snapshots(self, read: Callable[[], F], what: str, timeout: float | None) -> Iterator[F]:
        """What ``read`` returns at each poll, the final one last; ``WaitTimeout`` once
        ``timeout`` passes first."""
        deadline = Deadline(timeout)
        for delay in poll_delays():
            seen = read()
            yield seen
            if seen.is_final:
                return
            wait = deadline.clip(delay)
            if wait is None:
                raise WaitTimeout(what, timeout or 0, seen)
            time.sleep(wait)

    def _follow(self, read: Callable[[], F], what: str, timeout: float | None) -> F:
        return deque(self._snapshots(read, what, timeout), maxlen=1)[0]

    # --- kernels and jobs -------------------------------------------------------------------

    def kernels(self) -> KernelList:
        """The kernels this service runs, with their params' JSON Schema."""
        return self._run(_calls.kernels())

    def submit(
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
        return self._run(call)

    def get(self, job_id: str) -> Job:
        """A job, an array, or an element (``"{array_id}:{index}"``)."""
        return self._run(_calls.get_job(job_id))

    def list(
        self,
        *,
        state: str | None = None,
        kernel: str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> Iterator[Job]:
        """The tenant's jobs and arrays (not their elements), newest first, every page;
        ``labels``: each ``key: value`` must match."""
        filters = _calls.job_filters(
            state=state,
            kernel=kernel,
            labels=labels,
            created_after=created_after,
            created_before=created_before,
        )
        for item in self._items("/v1/jobs", filters):
            yield Job.model_validate(item)

    def elements(self, array_id: str, *, state: str | None = None) -> Iterator[Job]:
        """The elements of an array in index order, every page."""
        path = f"{_calls.job_path(array_id)}/elements"
        for item in self._items(path, _calls.job_filters(state=state)):
            yield Job.model_validate(item)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job, or every element of an array that is not final; ``ApiError`` 409
        when it is final already."""
        return self._run(_calls.cancel(job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """The job once it is final (SUCCEEDED, FAILED, CANCELLED or TIMED_OUT); raises
        ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds. ``on_progress`` is
        called with the job at each change on the way (its ``progress``, an array's
        ``array.counts``). Driven by the job's events (polling a gateway without them)."""
        job: Job | None = None
        for job in self.watch(job_id, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        assert job is not None  # watch yields at least once
        return job

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job at each change until it is final (the last one): for a progress display.
        It follows the job's events (``GET /v1/events?job=``) and reads the job again at
        each change of state (a progress event is applied as it comes). An array's counts
        come with its progress events (one per flush of a chunk of its elements), applied as
        they come; they are read again after its other events (its own state's and its
        elements', at most 4 reads a second), and after 10 s without any. A gateway without
        events is polled. ``WaitTimeout`` after
        ``timeout`` seconds."""
        what = f"job {job_id}"
        deadline = Deadline(timeout)
        try:
            response = self._open_events(job_id, None, read_s(deadline))
        except ApiError as error:
            if error.status != 404:
                raise
            yield from self._snapshots(lambda: self.get(job_id), what, timeout)
            return
        try:
            job = self.get(job_id)
        except BaseException:
            response.close()
            raise
        if job.array is not None:
            yield from self._watch_array(job, response, deadline, what)
            return
        items = self._event_items(job_id, SseParser(), response, deadline)
        try:
            yield job
            while not job.is_final:
                item = next(items)
                if deadline.clip(1.0) is None:
                    raise WaitTimeout(what, timeout or 0, job)
                seen = apply(job, item)
                if seen is None:
                    continue
                fresh = self.get(job_id) if seen is READ_AGAIN else _job(seen)
                if fresh != job:  # a keep-alive's look often finds nothing new
                    job = fresh
                    yield job
        finally:
            items.close()
            response.close()

    def _watch_array(
        self, job: Job, response: httpx.Response, deadline: Deadline, what: str
    ) -> Iterator[Job]:
        """``watch`` for an array: its stream (its own events and its elements') read by a
        thread of its own, the counts read again soon after an event, or once the stream
        has been quiet for a while (``next_array_read``)."""
        pump = _Pump(self, job.id, response, deadline)
        try:
            yield job
            last_read, stale = time.monotonic(), False
            while not job.is_final:
                item = pump.get(next_array_read(last_read, stale) - time.monotonic())
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
                fresh = self.get(job.id)
                last_read, stale = time.monotonic(), False
                if fresh != job:
                    job = fresh
                    yield job
        finally:
            pump.stop()

    # --- events, history, logs --------------------------------------------------------------

    def events(
        self,
        job: str | None = None,
        after: str | None = None,
        *,
        on_open: Callable[[], object] | None = None,
    ) -> Iterator[Event]:
        """The tenant's events as they happen (``GET /v1/events``), oldest first, without
        end: every job's, or one job's, array's or workflow's (``job``); after the event
        ``after`` (an ``Event.id``) when given. A dropped connection is opened again after
        the last event seen: nothing is missed, nothing comes twice. Opening it is retried
        as any request (``self.retry``): a longer outage raises. ``on_open`` is called each
        time the stream is open (from then on no event is missed), before the first event:
        a caller can look at the state of things then, knowing that every later change
        comes as an event."""
        parser = SseParser(last_id=after)
        response = self._open_events(job, after, EVENTS_READ_S)
        if on_open is not None:
            on_open()
        reopened = (lambda _response: on_open()) if on_open is not None else None
        items = self._event_items(job, parser, response, None, reopened)
        try:
            for item in items:
                if isinstance(item, Event):
                    yield item
        finally:
            items.close()
            response.close()

    def _open_events(self, job: str | None, after: str | None, read: float) -> httpx.Response:
        return self._send(_calls.events(job, after, read), stream=True)

    def _event_items(
        self,
        job: str | None,
        parser: SseParser,
        response: httpx.Response,
        deadline: Deadline | None,
        opened: Callable[[httpx.Response], object] | None = None,
    ) -> Generator[Event | KeepAlive, None, None]:
        """What the stream brings from ``response`` on; after a drop, a ``KEEP_ALIVE`` and
        the stream opened again after ``parser.last_id`` (given to ``opened``)."""
        drops = 0
        while True:
            try:
                for line in response.iter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        drops = 0
                        yield item
            except httpx.TransportError:
                pass  # dropped, or silent past its read timeout
            finally:
                response.close()
            yield KEEP_ALIVE
            drops += 1
            time.sleep(reconnect_delay(drops))
            response = self._open_events(job, parser.last_id, read_s(deadline))
            if opened is not None:
                opened(response)

    def job_events(self, job_id: str) -> TransitionList:
        """The job's changes of state, oldest first (``at``, ``state``, ``reason``,
        ``attempt``, ``worker``)."""
        return self._run(_calls.job_events(job_id))

    def attempts(self, job_id: str) -> AttemptList:
        """The job's tries: worker, device, times, CPU and GPU seconds, outcome, error."""
        return self._run(_calls.attempts(job_id))

    def log(self, job_id: str) -> str:
        """The job's log so far (every attempt), as text."""
        return self._run(_calls.log(job_id))

    def follow_log(self, job_id: str) -> Iterator[str]:
        """The job's log line by line as it is written, ending once the job is final. A
        dropped connection is opened again: the lines given already are skipped, each as
        often as it was given, so that none is lost and none comes twice."""
        given: dict[str, int] = {}
        drops = 0
        while True:
            response = self._send(_calls.follow_log(job_id, LOG_READ_S), stream=True)
            resume = LogResume.after(given)
            try:
                for line in response.iter_lines():
                    if resume.new(line):
                        given[line] = given.get(line, 0) + 1
                        drops = 0
                        yield line
                return
            except httpx.TransportError:
                drops += 1
            finally:
                response.close()
            time.sleep(reconnect_delay(drops))

    # --- workflows and webhooks -------------------------------------------------------------

    def submit_workflow(
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
        return self._run(_calls.submit_workflow(name, steps, idempotency_key))

    def get_workflow(self, workflow_id: str) -> Workflow:
        """A workflow: its state, each step's job id, its steps by state."""
        return self._run(_calls.get_workflow(workflow_id))

    def list_workflows(self) -> Iterator[Workflow]:
        """The tenant's workflows, newest first, every page (each asked when needed)."""
        for item in self._items("/v1/workflows"):
            yield Workflow.model_validate(item)

    def cancel_workflow(self, workflow_id: str) -> Workflow:
        """Cancel every step that is not final; ``ApiError`` 409 when it is final already."""
        return self._run(_calls.cancel_workflow(workflow_id))

    def wait_workflow(
        self,
        workflow_id: str,
        *,
        timeout: float | None = None,
    ) -> Workflow:
        """The workflow once it is final (its state is SUCCEEDED, FAILED or CANCELLED),
        read again at each ``workflow.state`` event of its stream (and at a keep-alive);
        polled on a gateway without events. ``WaitTimeout`` after ``timeout`` seconds."""
        what = f"workflow {workflow_id}"
        deadline = Deadline(timeout)
        try:
            response = self._open_events(workflow_id, None, read_s(deadline))
        except ApiError as error:
            if error.status != 404:
                raise
            return self._follow(lambda: self.get_workflow(workflow_id), what, timeout)
        items = self._event_items(workflow_id, SseParser(), response, deadline)
        try:
            flow = self.get_workflow(workflow_id)
            while not flow.is_final:
                item = next(items)
                if deadline.clip(1.0) is None:
                    raise WaitTimeout(what, timeout or 0, flow)
                if isinstance(item, KeepAlive) or item.type == "workflow.state":
                    flow = self.get_workflow(workflow_id)
            return flow
        finally:
            items.close()
            response.close()

    def rotate_webhook_secret(self) -> WebhookSecret:
        """A new secret for the ``Stratus-Signature`` of every webhook delivery from now on
        (the old one stops signing). Shown only in this answer: keep it."""
        return self._run(_calls.rotate_webhook_secret())

    # --- migrations, usage, tenant ----------------------------------------------------------

    def migrate(
        self,
        dataset: str,
        to_tier: str,
        mode: str = "copy",
        *,
        idempotency_key: str | None = None,
    ) -> Migration:
        """Copy (or ``mode="move"``) a dataset to another storage tier; the copy is verified
        before it is published. Follow it with ``wait_migration``."""
        return self._run(_calls.migrate(dataset, to_tier, mode, idempotency_key))

    def get_migration(self, migration_id: str) -> Migration:
        return self._run(_calls.get_migration(migration_id))

    def migrations(
        self, *, state: str | None = None, dataset: str | None = None
    ) -> Iterator[Migration]:
        filters = _calls.query(state=state, dataset=dataset)
        for item in self._items("/v1/migrations", filters):
            yield Migration.model_validate(item)

    def wait_migration(self, migration_id: str, *, timeout: float | None = None) -> Migration:
        """The migration once SUCCEEDED or FAILED; ``WaitTimeout`` after ``timeout``."""
        return self._follow(
            lambda: self.get_migration(migration_id), f"migration {migration_id}", timeout
        )

    def watch_migration(
        self, migration_id: str, *, timeout: float | None = None
    ) -> Iterator[Migration]:
        """The migration at each look until it is final (the last one), as ``watch``."""
        read = partial(self.get_migration, migration_id)
        return self._snapshots(read, f"migration {migration_id}", timeout)

    def usage(self) -> Usage:
        """CPU and GPU seconds, jobs by state, storage and bytes moved of the tenant."""
        return self._run(_calls.usage())

    def tenant(self) -> TenantSelf:
        """The caller's tenant: quotas, weight and the use of each quota now."""
        return self._run(_calls.tenant())


class _Pump:
    """A thread that reads a job's stream into a queue, so that its reader can wait for
    the next item or for a time, whichever comes first. ``stop`` ends it: the socket of
    the stream it reads is shut down, which wakes the read at once."""

    def __init__(
        self, client: Client, job_id: str, response: httpx.Response, deadline: Deadline
    ) -> None:
        self._items: queue.Queue[Event | KeepAlive | BaseException] = queue.Queue()
        self._stopped = threading.Event()
        self._response = response
        self._thread = threading.Thread(
            target=self._run, args=(client, job_id, deadline), name="stratus-events", daemon=True
        )
        self._thread.start()

    def _opened(self, response: httpx.Response) -> None:
        self._response = response
        if self._stopped.is_set():
            _shut(response)

    def _run(self, client: Client, job_id: str, deadline: Deadline) -> None:
        items = client._event_items(job_id, SseParser(), self._response, deadline, self._opened)
        try:
            for item in items:
                if self._stopped.is_set():
                    return
                self._items.put(item)
        except Exception as error:  # an API error opening it again: the reader's to raise
            if not self._stopped.is_set():
                self._items.put(error)
        finally:
            items.close()

    def get(self, wait_s: float) -> Event | KeepAlive | None:
        """The next item, or None once ``wait_s`` passed without one."""
        try:
            item = self._items.get(timeout=max(0.0, wait_s))
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopped.set()
        _shut(self._response)
        self._thread.join(timeout=5.0)


def _shut(response: httpx.Response) -> None:
    """Wake a read blocked on ``response`` in another thread (closing its socket would not):
    that thread then closes it."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _job(seen: object) -> Job:
    assert isinstance(seen, Job)
    return seen
