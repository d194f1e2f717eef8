"""Problem ``type``s are the project's own URIs, one per kind of error, each documented in
docs/PROBLEMS.md; no answer is ``about:blank``."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx

from services.gateway.settings import GatewaySettings
from shared import errors
from shared.problems import HTTP_KINDS, KIND_PATTERN, OVERLOADED, PROBLEM_BASE, error_kind
from tests.gateway.conftest import TenantKey

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROBLEMS.md"


def known_kinds() -> set[str]:
    """Every kind an answer can name: each status's own, each domain error's (all defined in
    ``shared.errors``), and the one the problem table names itself (every connection busy)."""
    pending, domain = [errors.StratusError], set()
    while pending:
        for cls in pending.pop().__subclasses__():
            if cls.__module__ == errors.__name__:
                domain.add(error_kind(cls))
            pending.append(cls)
    return {*HTTP_KINDS.values(), *domain, OVERLOADED}


def documented_kinds() -> set[str]:
    """The kinds in the first column of the page's table."""
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_every_kind_is_documented_and_every_documented_kind_exists() -> None:
    assert known_kinds() == documented_kinds()
    for kind in known_kinds():
        assert re.fullmatch(KIND_PATTERN, PROBLEM_BASE + kind), kind


async def test_answers_name_their_own_kind(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    too_big = GatewaySettings().max_body_bytes + 1
    cases = {
        "unauthorized": await client.get("/v1/jobs"),
        "not-found": await client.get(f"/v1/jobs/{uuid.uuid4()}", headers=tenant.headers),
        "validation-failed": await client.get(
            "/v1/jobs", params={"limit": 0}, headers=tenant.headers
        ),
        "method-not-allowed": await client.delete("/v1/jobs", headers=tenant.headers),
        "payload-too-large": await client.post(
            "/v1/jobs", content=b"{}", headers={**tenant.headers, "Content-Length": str(too_big)}
        ),
    }
    for kind, r in cases.items():
        assert r.headers["content-type"].startswith("application/problem+json"), (kind, r.text)
        assert r.json()["type"] == PROBLEM_BASE + kind, r.text
        assert kind in known_kinds()
