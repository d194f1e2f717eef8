"""The console's page and assets as the gateway serves them: its own assets only (no CDN), a
strict Content-Security-Policy, a problem for a missing asset; no browser, no server."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from services.gateway.console.routes import STATIC, install_console
from shared.problems import install_problem_handlers


def app() -> FastAPI:
    a = FastAPI()
    install_problem_handlers(a)
    install_console(a)
    return a


async def test_the_page_and_its_assets() -> None:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        page = await c.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        # every script and style the page names is served from the gateway itself
        refs = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
        assert refs
        assert all(r.startswith("/console/assets/") for r in refs), refs
        for ref in refs:
            r = await c.get(ref)
            assert r.status_code == 200, ref
            assert r.headers["x-content-type-options"] == "nosniff"
        missing = await c.get("/console/assets/nope.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await c.get("/console/")).headers["location"] == "/console"


def test_the_scripts_load_nothing_from_elsewhere() -> None:
    """No URL of another origin in the assets, and the key never goes into a URL."""
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name
        assert "localStorage" not in text, path.name
        assert "document.cookie" not in text, path.name
    api = (STATIC / "api.js").read_text()
    assert "sessionStorage" in api
    assert "Authorization" in api
