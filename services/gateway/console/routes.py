"""``GET /console``: the web console, a static page whose scripts use the public API only.

The page and its assets ship in the package (no CDN: an air-gapped cluster works), no build
step. The browser keeps the API key in session storage and sends it as ``Authorization`` on
every call, the event stream included (``fetch`` streaming, not ``EventSource``, which cannot
send headers); the key is never in a URL or a cookie. The page is served with a strict
Content-Security-Policy: its own scripts and styles only, calls to its own origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

CONSOLE = "/console"
ASSETS = "/console/assets"
STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get(CONSOLE)
async def console_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get(f"{CONSOLE}/")
async def console_slash() -> RedirectResponse:
    return RedirectResponse(CONSOLE, status_code=308)


class _Assets(StaticFiles):
    """The console's scripts and styles, with the page's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, with_headers)


def install_console(app: FastAPI) -> None:
    """``/console`` and ``/console/assets/*``."""
    app.include_router(router)
    app.mount(ASSETS, _Assets(directory=str(STATIC)), name="console-assets")
