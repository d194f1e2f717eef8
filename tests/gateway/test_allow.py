"""A 405 lists in ``Allow`` every method the path serves, as the OpenAPI document declares
them (not only those of the first route that matched the path)."""

from __future__ import annotations

import re
import uuid

import httpx

SAMPLES = {"name": "runs/a.npy"}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES.get(m.group(1), str(uuid.uuid4())), template)


async def test_every_405_lists_the_methods_of_its_path(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    checked = 0
    for template, item in doc["paths"].items():
        declared = {method.upper() for method in item}
        path = concrete(template)
        for method in ("OPTIONS", *({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared)):
            r = await client.request(method, path)
            assert r.status_code == 405, (method, path, r.text)
            allowed = {m.strip() for m in r.headers["allow"].split(",")} - {"HEAD"}
            assert allowed == declared, (method, path, r.headers["allow"])
            assert r.json()["type"].endswith("/method-not-allowed")
            checked += 1
    assert checked > 50
