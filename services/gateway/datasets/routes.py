"""``/v1/datasets``: parse, call the service, map the result. Bodies stream both ways."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from services.gateway.datasets import service
from services.gateway.datasets.schemas import DatasetList, DatasetOut, TierList, TierOut
from services.gateway.deps import PrincipalDep, ResourcesDep, SessionDep, SettingsDep
from services.gateway.routing import PageDep, feature_router
from shared.db.models import Dataset
from shared.runtime import Resources
from shared.storage import Storage, validate_name
from shared.storage.checksum import etag
from shared.storage.names import MAX_NAME, NAME_CHARS_PATTERN
from shared.storage.tiers import Reader

READ_BLOCK = 1 << 20


@asynccontextmanager
async def storage_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The gateway's tiers, opened with the app and closed with it."""
    storage = Storage(app.state.settings.storage)
    app.state.storage = storage
    try:
        yield
    finally:
        await storage.close()


router = feature_router(
    prefix="/v1",
    tag="datasets",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such dataset for this tenant",
        429: "rate limit exceeded",
        409: "the name clashes with another dataset (a file and a folder)",
        413: "over the tenant's storage_bytes quota",
        422: "invalid name or tier",
        503: "a storage tier or the database is down; retry after Retry-After",
    },
    lifespan=storage_lifespan,
)
tiers_router = feature_router(
    prefix="/v1", tag="tiers", errors={403: "tenant suspended", 429: "rate limit exceeded"}
)


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(dataset, from_attributes=True)


def checked_name(name: str) -> str:
    """The name as the client meant it (the path decoded: clients may encode ``/`` as
    ``%2F``), held to the naming rules, which refuse what an encoding could smuggle in (a NUL,
    a ``..`` segment, a backslash)."""
    return validate_name(name)


@dataclass(frozen=True)
class StaleCopies:
    """Removes a dataset's copies that its row no longer lists, once the answer is sent (the
    request's transaction committed)."""

    background: BackgroundTasks
    resources: Resources
    storage: Storage

    def remove_after_commit(self, tenant_id: uuid.UUID, name: str, tiers: tuple[str, ...]) -> None:
        self.background.add_task(
            service.clean_stale,
            sessions=self.resources.sessions,
            storage=self.storage,
            tenant_id=tenant_id,
            name=name,
            tiers=tiers,
        )


async def stale_copies(
    background: BackgroundTasks, resources: ResourcesDep, storage: StorageDep
) -> StaleCopies:
    return StaleCopies(background, resources, storage)


StaleCopiesDep = Annotated[StaleCopies, Depends(stale_copies)]


@router.put(
    "/datasets/{name:path}",
    status_code=201,
    responses={200: {"description": "an existing dataset was overwritten", "model": DatasetOut}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_dataset(
    name: str,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    storage: StorageDep,
    resources: ResourcesDep,
    stale: StaleCopiesDep,
    response: Response,
    tier: Annotated[str | None, Query(description="where to store it (default: local)")] = None,
) -> DatasetOut:
    tenant_id = principal.require_tenant("data:write")
    name = checked_name(name)
    # Read from the transport, not declared as an API parameter: it describes the body.
    declared = request.headers.get("content-length", "")
    published = await service.upload(
        session=session,
        sessions=resources.sessions,
        storage=storage,
        tenant_id=tenant_id,
        name=name,
        tier=tier,
        body=request.stream(),
        declared=int(declared) if declared.isdigit() else None,
        quota=int(principal.quotas["storage_bytes"]),
    )
    stale.remove_after_commit(tenant_id, name, published.stale_tiers)
    response.status_code = 201 if published.created else 200
    response.headers["ETag"] = etag(published.dataset.checksum)
    response.headers["Location"] = f"/v1/datasets/{name}"
    return dataset_out(published.dataset)


async def _stream(reader: Reader) -> AsyncIterator[bytes]:
    try:
        while block := await reader.read(READ_BLOCK):
            yield block
    finally:
        await reader.close()


@router.get(
    "/datasets/{name:path}",
    response_model=None,
    responses={
        200: {
            "description": "the bytes (streamed), or with ?meta=1 the Dataset",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": DatasetOut.model_json_schema()},
            },
        },
        304: {"description": "If-None-Match matched the ETag"},
    },
)
async def get_dataset(
    name: str,
    principal: PrincipalDep,
    session: SessionDep,
    storage: StorageDep,
    meta: Annotated[bool, Query(description="1: the Dataset instead of the bytes")] = False,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    tenant_id = principal.require_tenant("data:read")
    name = checked_name(name)
    if meta:
        dataset = await service.get_meta(session=session, tenant_id=tenant_id, name=name)
        body = dataset_out(dataset).model_dump_json()
        return Response(
            body, media_type="application/json", headers={"ETag": etag(dataset.checksum)}
        )
    dataset, reader = await service.open_for_read(
        session=session, storage=storage, tenant_id=tenant_id, name=name
    )
    tag = etag(dataset.checksum)
    if if_none_match is not None and tag in {t.strip() for t in if_none_match.split(",")}:
        await reader.close()
        return Response(status_code=304, headers={"ETag": tag})
    headers = {"ETag": tag, "Content-Length": str(dataset.size)}
    return StreamingResponse(
        _stream(reader), media_type="application/octet-stream", headers=headers
    )


@router.get("/datasets")
async def list_datasets(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    prefix: Annotated[
        str | None,
        Query(max_length=MAX_NAME, pattern=NAME_CHARS_PATTERN, description="names that start so"),
    ] = None,
) -> DatasetList:
    tenant_id = principal.require_tenant("data:read")
    rows, next_cursor = await service.list_datasets(
        session=session, tenant_id=tenant_id, prefix=prefix, page=page
    )
    return DatasetList(items=[dataset_out(d) for d in rows], next_cursor=next_cursor)


@router.delete("/datasets/{name:path}", status_code=204)
async def delete_dataset(
    name: str, principal: PrincipalDep, session: SessionDep, stale: StaleCopiesDep
) -> Response:
    tenant_id = principal.require_tenant("data:write")
    name = checked_name(name)
    tiers = await service.delete_dataset(session=session, tenant_id=tenant_id, name=name)
    stale.remove_after_commit(tenant_id, name, tiers)
    return Response(status_code=204)


@tiers_router.get("/tiers")
async def list_tiers(_principal: PrincipalDep, settings: SettingsDep) -> TierList:
    """The storage tiers this cluster offers (for ``?tier=``, ``to_tier``, ``output_tier``)."""
    storage = settings.storage
    return TierList(
        items=[
            TierOut(name=name, kind=tier.kind, default=name == storage.default_tier)
            for name, tier in storage.tiers().items()
        ]
    )
