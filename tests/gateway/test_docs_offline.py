"""``/docs`` works with no way out of the cluster: every asset the page loads is served by the
gateway itself; ``GET /`` says where the API and its documentation are."""

from __future__ import annotations

import re

import httpx


def referenced_urls(html: str) -> list[str]:
    """Every URL the page names: attributes, and the strings its script passes to Swagger UI."""
    attrs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    strings = re.findall(r"""(?:url|href|src)\s*[:=]\s*['"]([^'"]+)['"]""", html)
    return [*attrs, *strings]


async def test_docs_load_every_asset_from_the_gateway(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    urls = referenced_urls(page.text)
    assert any(u.endswith(".js") for u in urls), urls
    assert any(u.endswith(".css") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), f"{url} is not served by the gateway"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert "/openapi.json" in urls


async def test_no_page_names_a_cdn(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    assert "cdn" not in page.lower()
    assert (await client.get("/redoc")).status_code == 404  # no ReDoc bundle ships


async def test_the_root_says_where_the_api_and_its_docs_are(client: httpx.AsyncClient) -> None:
    r = await client.get("/")  # no key
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Stratus"
    assert body["api_version"] == "1"
    assert body["version"]
    links = body["links"]
    assert (links["docs"], links["openapi"], links["healthz"]) == (
        "/docs",
        "/openapi.json",
        "/healthz",
    )
    for link in links.values():
        assert (await client.get(link)).status_code == 200, link
