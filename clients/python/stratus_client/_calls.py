"""Every route the client uses, once, as a value: method, path, query, body, how to read the
answer, and whether repeating it is safe. The sync and async clients only send these."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from stratus_client.models import (
    ApiKey,
    ArraySpec,
    Attempt,
    Dataset,
    DeadLetters,
    Job,
    Kernel,
    Migration,
    Page,
    Quotas,
    Tenant,
    TenantSelf,
    Transition,
    Usage,
    WebhookSecret,
    WorkerPool,
    Workflow,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Params = tuple[tuple[str, str], ...]
DEFAULT_PAGE_SIZE = 100  # the API's maximum is 500; 100 keeps each answer small


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params = ()
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Repeating it after a lost answer does nothing twice (GET, PUT, DELETE, a keyed POST).
    idempotent: bool = True
    # Seconds to wait for the next bytes of the answer, when not the client's own (streams).
    read_timeout: float | None = None

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """The client's timeouts, with this call's ``read_timeout`` when it has one."""
        if self.read_timeout is None:
            return base
        return httpx.Timeout(
            connect=base.connect, read=self.read_timeout, write=base.write, pool=base.pool
        )


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda r: cls.model_validate_json(r.content)


_KERNELS = TypeAdapter(list[Kernel])


def _items_of(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    """An answer ``{"items": [...]}`` that is never paged, as models."""

    def parse(r: httpx.Response) -> list[M]:
        return [cls.model_validate(item) for item in Page.model_validate_json(r.content).items]

    return parse


def _nothing(_r: httpx.Response) -> None:
    return None


def _raw(r: httpx.Response) -> httpx.Response:
    return r


def job_path(job_id: str) -> str:
    """``/v1/jobs/{id}``: a job's, an array's or an element's (``array_id:index``) id."""
    return f"/v1/jobs/{quote(str(job_id), safe=':')}"


def dataset_path(name: str) -> str:
    return f"/v1/datasets/{quote(name, safe='/')}"


def _time(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


def query(**params: Any) -> Params:
    """The query parameters that have a value (the API refuses unknown or empty ones)."""
    return tuple((k, str(v)) for k, v in params.items() if v is not None)


def kernels() -> Call[list[Kernel]]:
    return Call("GET", "/v1/kernels", lambda r: _KERNELS.validate_json(r.content))


def submit(body: dict[str, Any], idempotency_key: str | None) -> Call[Job]:
    """The submission with its ``Idempotency-Key`` (a new one unless given): every retry of
    the call carries the same key, so the service creates the job at most once."""
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", "/v1/jobs", _model(Job), json=body, headers={"Idempotency-Key": key})


def submission(
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
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/jobs``: only what was given, so the service's defaults
    apply to the rest."""
    if isinstance(array, ArraySpec):
        array = array.model_dump(exclude_none=True)
    body: dict[str, Any] = {
        "kernel": kernel,
        "params": dict(params) if params is not None else None,
        "inputs": dict(inputs) if inputs is not None else None,
        "outputs": dict(outputs) if outputs is not None else None,
        "device": device,
        "priority": priority,
        "timeout_s": timeout_s,
        "max_retries": max_retries,
        "labels": dict(labels) if labels is not None else None,
        "output_tier": output_tier,
        "array": dict(array) if array is not None else None,
        "depends_on": [dict(d) for d in depends_on] if depends_on is not None else None,
        "notify": dict(notify) if notify is not None else None,
    }
    return {k: v for k, v in body.items() if v is not None} | dict(extra or {})


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", job_path(job_id), _model(Job))


def cancel(job_id: str) -> Call[Job]:
    # Not repeated after a lost answer: a second cancel of a job the first one finished is
    # a 409, which would hide that the first one worked.
    return Call("POST", f"{job_path(job_id)}/cancel", _model(Job), idempotent=False)


def events(job: str | None, after: str | None, read_timeout: float) -> Call[httpx.Response]:
    """``GET /v1/events`` as a stream, after event ``after`` (``Last-Event-ID``: the same
    meaning as ``?after=``, and what a browser's EventSource sends when it reconnects)."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if after is not None:
        headers["Last-Event-ID"] = after
    return Call(
        "GET",
        "/v1/events",
        _raw,
        params=query(job=job),
        headers=headers,
        read_timeout=read_timeout,
    )


def job_events(job_id: str) -> Call[list[Transition]]:
    return Call("GET", f"{job_path(job_id)}/events", _items_of(Transition))


def attempts(job_id: str) -> Call[list[Attempt]]:
    return Call("GET", f"{job_path(job_id)}/attempts", _items_of(Attempt))


def log(job_id: str) -> Call[str]:
    return Call("GET", f"{job_path(job_id)}/log", lambda r: r.text)


def follow_log(job_id: str, read_timeout: float) -> Call[httpx.Response]:
    """The log as a stream that ends once the job is final."""
    path = f"{job_path(job_id)}/log"
    return Call("GET", path, _raw, params=(("follow", "1"),), read_timeout=read_timeout)


def job_filters(
    *,
    state: str | None = None,
    kernel: str | None = None,
    labels: Mapping[str, str] | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
) -> Params:
    """``GET /v1/jobs`` filters: every label given must match (``?label=k:v`` repeated)."""
    pairs = query(
        state=state,
        kernel=kernel,
        created_after=None if created_after is None else _time(created_after),
        created_before=None if created_before is None else _time(created_before),
    )
    return pairs + tuple(("label", f"{k}:{v}") for k, v in (labels or {}).items())


def page(path: str, filters: Params, cursor: str | None, page_size: int) -> Call[Page]:
    """One page of the list at ``path``; the next one is asked with its ``next_cursor``."""
    params = (*filters, ("limit", str(page_size)), *query(cursor=cursor))
    return Call("GET", path, _model(Page), params=params)


def workflow_path(workflow_id: str) -> str:
    return f"/v1/workflows/{quote(str(workflow_id), safe='')}"


def submit_workflow(
    name: str, steps: Mapping[str, Mapping[str, Any]], idempotency_key: str | None
) -> Call[Workflow]:
    """``POST /v1/workflows`` with its ``Idempotency-Key`` (a new one unless given), the
    same on every retry: the graph is created once."""
    key = idempotency_key or str(uuid.uuid4())
    body = {"name": name, "steps": {k: dict(v) for k, v in steps.items()}}
    return Call(
        "POST", "/v1/workflows", _model(Workflow), json=body, headers={"Idempotency-Key": key}
    )


def get_workflow(workflow_id: str) -> Call[Workflow]:
    return Call("GET", workflow_path(workflow_id), _model(Workflow))


def cancel_workflow(workflow_id: str) -> Call[Workflow]:
    # Not repeated after a lost answer, as ``cancel``: the second try would be a 409.
    path = f"{workflow_path(workflow_id)}/cancel"
    return Call("POST", path, _model(Workflow), idempotent=False)


def rotate_webhook_secret() -> Call[WebhookSecret]:
    # Not repeated: each call makes a new secret, and the one a lost answer held is gone.
    return Call("POST", "/v1/tenant/webhook-secret", _model(WebhookSecret), idempotent=False)


def put_dataset(name: str, tier: str | None) -> Call[Dataset]:
    return Call("PUT", dataset_path(name), _model(Dataset), params=query(tier=tier))


def get_dataset(name: str) -> Call[httpx.Response]:
    return Call("GET", dataset_path(name), _raw)


def dataset_meta(name: str) -> Call[Dataset]:
    return Call("GET", dataset_path(name), _model(Dataset), params=(("meta", "1"),))


def delete_dataset(name: str) -> Call[None]:
    return Call("DELETE", dataset_path(name), _nothing)


def migrate(dataset: str, to_tier: str, mode: str, idempotency_key: str | None) -> Call[Migration]:
    key = idempotency_key or str(uuid.uuid4())
    body = {"dataset": dataset, "to_tier": to_tier, "mode": mode}
    return Call(
        "POST", "/v1/migrations", _model(Migration), json=body, headers={"Idempotency-Key": key}
    )


def get_migration(migration_id: str) -> Call[Migration]:
    return Call("GET", f"/v1/migrations/{quote(str(migration_id), safe='')}", _model(Migration))


def usage() -> Call[Usage]:
    return Call("GET", "/v1/usage", _model(Usage))


def tenant() -> Call[TenantSelf]:
    return Call("GET", "/v1/tenant", _model(TenantSelf))


# --- admin (the platform admin key) ---------------------------------------------------------


def create_tenant(
    name: str, weight: int | None, quotas: Quotas | Mapping[str, Any] | None
) -> Call[Tenant]:
    if isinstance(quotas, Quotas):
        quotas = quotas.model_dump(exclude_none=True)
    body = {"name": name, "weight": weight, "quotas": None if quotas is None else dict(quotas)}
    body = {k: v for k, v in body.items() if v is not None}
    # A lost answer is not repeated: the second try would be a 409 for the name just taken.
    return Call("POST", "/v1/tenants", _model(Tenant), json=body, idempotent=False)


def tenant_path(tenant_id: str) -> str:
    return f"/v1/tenants/{quote(str(tenant_id), safe='')}"


def get_tenant(tenant_id: str) -> Call[Tenant]:
    return Call("GET", tenant_path(tenant_id), _model(Tenant))


def update_tenant(
    tenant_id: str,
    *,
    weight: int | None,
    quotas: Quotas | Mapping[str, Any] | None,
    suspended: bool | None,
) -> Call[Tenant]:
    if isinstance(quotas, Quotas):
        quotas = quotas.model_dump(exclude_none=True)
    body = {
        "weight": weight,
        "quotas": None if quotas is None else dict(quotas),
        "suspended": suspended,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return Call("PATCH", tenant_path(tenant_id), _model(Tenant), json=body)


def create_key(tenant_id: str, name: str, scopes: Iterable[str] | None) -> Call[ApiKey]:
    body: dict[str, Any] = {"name": name}
    if scopes is not None:
        body["scopes"] = list(scopes)
    path = f"{tenant_path(tenant_id)}/keys"
    return Call("POST", path, _model(ApiKey), json=body, idempotent=False)


def delete_key(tenant_id: str, key_id: str) -> Call[None]:
    path = f"{tenant_path(tenant_id)}/keys/{quote(str(key_id), safe='')}"
    return Call("DELETE", path, _nothing)


def pools() -> Call[list[WorkerPool]]:
    return Call("GET", "/v1/admin/pools", _items_of(WorkerPool))


def dead_letters(peek: int) -> Call[list[DeadLetters]]:
    return Call("GET", "/v1/admin/dead-letters", _items_of(DeadLetters), params=query(peek=peek))
