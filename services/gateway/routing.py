"""What the gateway's feature routers share: the problem answers every route documents, and
the query of a newest-first list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from shared.pagination import DEFAULT_LIMIT, CursorQuery, Instant, LimitQuery, PageQuery
from shared.problems import problem_responses

# Every route of the public API authenticates its caller first.
UNAUTHENTICATED = {401: "missing or unknown API key"}


def feature_router(*, prefix: str, tag: str, errors: dict[int, str], **options: Any) -> APIRouter:
    """An ``APIRouter`` whose every route documents the 401 and ``errors`` (status: when) as
    ``Problem`` answers; ``options`` go to ``APIRouter`` (a ``lifespan``, say)."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        responses=problem_responses({**UNAUTHENTICATED, **errors}),
        **options,
    )


async def page_query(
    created_after: Annotated[Instant | None, Query(description="RFC 3339, exclusive")] = None,
    created_before: Annotated[Instant | None, Query(description="RFC 3339, exclusive")] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> PageQuery:
    return PageQuery(
        limit=limit, cursor=cursor, created_after=created_after, created_before=created_before
    )


PageDep = Annotated[PageQuery, Depends(page_query)]
