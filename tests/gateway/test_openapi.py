"""The gateway's OpenAPI document describes the contract: every endpoint, bearer auth, and
every error answer as a ``Problem`` (application/problem+json)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.app import create_app
from services.gateway.jobs.routes import label_pairs
from services.gateway.openapi import CURSOR_SCHEMA, LABEL_FILTER
from services.gateway.settings import GatewaySettings
from shared.kernels import CATALOGUE
from shared.problems import KIND_PATTERN, PROBLEM, PROBLEM_REF, Problem, problem_type
from shared.security import SCOPES
from shared.storage.names import MAX_NAME, NAME_PATTERN

CONTRACT = {
    "/v1/tenants": {"get", "post"},
    "/v1/tenants/{tenant_id}": {"get", "patch"},
    "/v1/tenants/{tenant_id}/keys": {"post"},
    "/v1/tenants/{tenant_id}/keys/{key_id}": {"delete"},
    "/v1/kernels": {"get"},
    "/v1/jobs": {"get", "post"},
    "/v1/jobs/{job_id}": {"get"},
    "/v1/jobs/{job_id}/cancel": {"post"},
    "/v1/jobs/{job_id}/elements": {"get"},
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


def test_the_document_names_the_values_this_gateway_accepts(doc: dict[str, Any]) -> None:
    """A request that keeps to the document is not refused for a value it allowed."""
    schemas = doc["components"]["schemas"]
    tiers = sorted(GatewaySettings().storage.tiers())
    assert schemas["JobSubmit"]["properties"]["kernel"]["enum"] == sorted(CATALOGUE)
    assert schemas["JobSubmit"]["properties"]["output_tier"]["enum"] == tiers
    assert schemas["MigrationCreate"]["properties"]["to_tier"]["enum"] == tiers
    scopes = schemas["KeyCreate"]["properties"]["scopes"]["anyOf"][0]
    assert scopes["items"]["enum"] == list(SCOPES)
    upload = doc["paths"]["/v1/datasets/{name}"]["put"]
    tier = next(p for p in upload["parameters"] if p["name"] == "tier")
    assert tier["schema"]["anyOf"][0]["enum"] == tiers


def test_dataset_names_cursors_and_label_filters_are_described(doc: dict[str, Any]) -> None:
    cursors = 0
    for path, method, op in operations(doc):
        for p in op.get("parameters", []):
            if p["in"] == "path" and path.startswith("/v1/datasets/"):
                assert p["schema"]["pattern"] == NAME_PATTERN, (path, method)
                assert p["schema"]["maxLength"] == MAX_NAME
            if p["name"] == "cursor" and path.endswith("/elements"):
                # an array's elements are paged by index: the cursor is the next one's
                assert p["schema"]["anyOf"][0]["pattern"] == "^[0-9]*$"
            elif p["name"] == "cursor":
                assert p["schema"]["anyOf"][0] == CURSOR_SCHEMA, (path, method)
                cursors += 1
    assert cursors >= 4
    label = next(p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "label")
    assert label["schema"]["anyOf"][0]["items"]["pattern"] == LABEL_FILTER


@given(st.lists(st.from_regex(LABEL_FILTER, fullmatch=True), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_every_label_filter_the_document_allows_is_accepted(filters: list[str]) -> None:
    assert len(label_pairs(filters)) == len(filters)


def test_an_upload_may_be_empty_but_declares_its_length(doc: dict[str, Any]) -> None:
    upload = doc["paths"]["/v1/datasets/{name}"]["put"]
    assert upload["requestBody"]["required"] is False
    assert upload["responses"]["411"]["content"] == {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}}


def test_created_resources_link_to_the_operations_that_use_their_ids(
    doc: dict[str, Any],
) -> None:
    ids = {op["operationId"] for _, _, op in operations(doc)}
    created = {
        ("/v1/jobs", "post", "201"): 2,
        ("/v1/migrations", "post", "202"): 1,
        ("/v1/datasets/{name}", "put", "201"): 2,
    }
    for (path, method, status), count in created.items():
        links = doc["paths"][path][method]["responses"][status]["links"]
        assert len(links) == count, (path, links)
        for link in links.values():
            assert link["operationId"] in ids


def test_a_submission_is_described_per_kernel(doc: dict[str, Any]) -> None:
    """Each kernel's params, inputs and outputs, as the submission rules check them."""
    variants = {v["title"]: v for v in doc["components"]["schemas"]["JobSubmit"]["oneOf"]}
    assert sorted(variants) == sorted(CATALOGUE)
    for name, spec in CATALOGUE.items():
        variant = variants[name]["properties"]
        assert variant["kernel"] == {"const": name}
        assert variant["params"] == spec.params.model_json_schema()
        assert variant["inputs"]["required"] == list(spec.inputs)
        assert variant["outputs"]["required"] == list(spec.outputs)
        assert variant["inputs"]["additionalProperties"] is False


def test_bounds_are_json_schema_keywords(doc: dict[str, Any]) -> None:
    """Every bound is ``minimum``/``maximum``, which clients and validators know; pydantic's own
    ``ge``/``le`` leak into the document when a bound is given after a validator."""
    leaked: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number") and {"ge", "le", "gt", "lt"} & set(node):
                leaked.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(doc, "")
    assert leaked == []
