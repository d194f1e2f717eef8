"""The synchronous client (``httpx.Client``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from stratus_client import _calls
from stratus_client._calls import DEFAULT_PAGE_SIZE, Call, Params
from stratus_client._config import DEFAULT_TIMEOUT_S, resolve
from stratus_client._wait import Deadline, Finishing, poll_delays
from stratus_client.admin import Admin
from stratus_client.datasets import Datasets
from stratus_client.errors import ApiError, WaitTimeout
from stratus_client.models import ArraySpec, Job, Kernel, Migration, TenantSelf, Usage
from stratus_client.retry import RetryEvent, RetryPolicy

T = TypeVar("T")
F = TypeVar("F", bound=Finishing)
Body = Callable[[], bytes | Iterator[bytes]]
KernelList = list[Kernel]  # named here: the class has a method called ``list``


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
        extra: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job (an array with ``array``). Fields left out take the service's
        defaults; ``extra`` adds body fields this client does not name. The submission
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

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once it is final (SUCCEEDED, FAILED, CANCELLED or TIMED_OUT); raises
        ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds."""
        return self._follow(lambda: self.get(job_id), f"job {job_id}", timeout)

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job as ``wait`` sees it at each look, until it is final (the last one): for a
        progress display. ``WaitTimeout`` after ``timeout`` seconds."""
        return self._snapshots(lambda: self.get(job_id), f"job {job_id}", timeout)

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
