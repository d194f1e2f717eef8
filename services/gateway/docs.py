"""Where the API and its documentation are: ``GET /``, and ``/docs`` (Swagger UI) served with
its assets from the gateway itself, so that it works on a cluster with no way to a CDN."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

DOCS = "/docs"
ASSETS = "/docs/assets"


class Links(BaseModel):
    docs: str = Field(description="interactive documentation (Swagger UI)")
    openapi: str = Field(description="the OpenAPI document")
    healthz: str = Field(description="liveness")
    readyz: str = Field(description="readiness: every dependency answers")


class ServiceIndex(BaseModel):
    """``GET /``: what this is and where to go next."""

    name: str
    version: str = Field(description="the Stratus release")
    api_version: str = Field(description="the REST API's version: its paths start /v{n}/")
    links: Links


router = APIRouter(tags=["meta"])


@router.get("/", summary="Where the API and its documentation are")
async def index(request: Request) -> ServiceIndex:
    app: FastAPI = request.app
    return ServiceIndex(
        name=app.title,
        version=_release(),
        api_version=app.version,
        links=Links(docs=DOCS, openapi=app.openapi_url or "", healthz="/healthz", readyz="/readyz"),
    )


def _release() -> str:
    try:
        return metadata.version("stratus")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@router.get(DOCS, include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "",
        title=f"{app.title} API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def install_docs(app: FastAPI) -> None:
    """``GET /``, ``/docs`` and its assets. The app is made with ``docs_url=None`` (FastAPI's
    own page loads Swagger UI from a CDN) and ``redoc_url=None`` (no ReDoc bundle ships)."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")
