"""The gateway's OpenAPI document describes the contract: every endpoint, bearer auth, and
every error answer as a ``Problem`` (application/problem+json)."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.problems import KIND_PATTERN, PROBLEM, PROBLEM_REF, Problem, problem_type

CONTRACT = {
    "/v1/tenants": {"get", "post"},
    "/v1/tenants/{tenant_id}": {"get", "patch"},
    "/v1/tenants/{tenant_id}/keys": {"post"},
    "/v1/tenants/{tenant_id}/keys/{key_id}": {"delete"},
    "/v1/kernels": {"get"},
    "/v1/jobs": {"get", "post"},
    "/v1/jobs/{job_id}": {"get"},
    "/v1/jobs/{job_id}/cancel": {"post"},
    "/v1/datasets": {"get"},
    "/v1/datasets/{name}": {"put", "get", "delete"},
    "/v1/migrations": {"get", "post"},
    "/v1/migrations/{migration_id}": {"get"},
    "/v1/usage": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
}


@pytest.fixture(scope="module")
def doc(test_env: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = create_app(GatewaySettings()).openapi()
    return document


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]


def test_every_contract_endpoint_is_described(doc: dict[str, Any]) -> None:
    for path, methods in CONTRACT.items():
        assert methods <= set(doc["paths"].get(path, {})), path


def test_every_error_answer_is_a_problem(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail"}
    assert schemas["Problem"]["properties"]["type"]["pattern"] == KIND_PATTERN
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 body, never sent
    checked = 0
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) >= 400 and path.startswith("/v1/"):  # /readyz: 503 + Readiness
                assert response["content"] == {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}}, (
                    path,
                    method,
                    status,
                )
                checked += 1
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(op["responses"]), (path, method)
    assert checked > 100
    # the model is the handlers' own shape
    Problem.model_validate(
        {"type": problem_type("invalid"), "title": "t", "status": 422, "detail": "d", "errors": []}
    )


def test_bearer_auth_on_every_v1_operation(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert list(schemes) == ["bearerAuth"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    for path, method, op in operations(doc):
        names = {p["name"].lower() for p in op.get("parameters", [])}
        assert "authorization" not in names, (path, method)  # a scheme, not a parameter
        if path.startswith("/v1/"):
            assert op.get("security") == [{"bearerAuth": []}], (path, method)
            assert {"401", "403"} <= set(op["responses"]), (path, method)
        else:
            assert "security" not in op, (path, method)


def test_health_endpoints_declare_what_they_send(doc: dict[str, Any]) -> None:
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    ready = doc["paths"]["/readyz"]["get"]["responses"]
    assert set(ready) >= {"200", "503"}


def test_usage_is_typed_as_the_contract_says(doc: dict[str, Any]) -> None:
    ok = doc["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/Usage"}
    usage = doc["components"]["schemas"]["Usage"]
    fields = {"cpu_seconds", "gpu_seconds", "jobs", "storage_bytes", "bytes_moved"}
    assert set(usage["required"]) == fields
