"""What the OpenAPI document says beyond the models: the values this gateway accepts (its
kernels, its configured tiers, the key scopes), the shape of dataset names, label filters and
cursors, and the links from a created resource to the operations that use its id.

A client (or a fuzzer) that keeps to the document gets no 422 for a value the document allowed.
Values that depend on the configuration (the tiers) are filled in per app, so the document
describes this deployment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from services.gateway.jobs.schemas import TEMPLATE_SCHEMA
from services.gateway.settings import GatewaySettings
from shared.kernels import CATALOGUE, KernelSpec
from shared.problems import problem_responses
from shared.security import SCOPES
from shared.storage.names import NAME_SCHEMA

# Cursors are opaque: the value is the ``next_cursor`` of a previous page, nothing else. The
# format names that rule, alone: a generator that knows the format makes cursors the server
# could have made (tests/e2e/schemathesis_hooks.py), one that does not cannot guess them from
# a length or a pattern either.
CURSOR_FORMAT = "stratus-cursor"
CURSOR_SCHEMA = {"type": "string", "format": CURSOR_FORMAT}
# ``?label=key:value``: a label key, a colon, a label value (the submission's rules).
LABEL_FILTER = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}:[^\x00-\x1f\x7f]{0,256}$"

# A job's id in a route: a UUID (a job, an array), or "{array_id}:{index}" (an element).
JOB_ID_PATTERN = (
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(:[0-9]{1,9})?$"
)

# (operation, response status) -> links: the id a response holds, and where it goes.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, str]]] = {
    ("post", "/v1/jobs", "201"): {
        "GetJob": ("get", "/v1/jobs/{job_id}", "job_id"),
        "CancelJob": ("post", "/v1/jobs/{job_id}/cancel", "job_id"),
    },
    ("post", "/v1/migrations", "202"): {
        "GetMigration": ("get", "/v1/migrations/{migration_id}", "migration_id"),
    },
}
DATASET_LINKS = {
    "GetDataset": ("get", "/v1/datasets/{name}"),
    "DeleteDataset": ("delete", "/v1/datasets/{name}"),
}


def describe_deployment(app: FastAPI, settings: GatewaySettings) -> None:
    """Amend the app's OpenAPI document once, on its first build."""
    generate = app.openapi
    tiers = sorted(settings.storage.tiers())

    def openapi() -> dict[str, Any]:
        doc = generate()
        if not doc.get("x-stratus-described"):
            amend(doc, tiers=tiers, array_max_size=settings.array_max_size)
            doc["x-stratus-described"] = True
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def amend(doc: dict[str, Any], *, tiers: list[str], array_max_size: int = 100_000) -> None:
    schemas = doc["components"]["schemas"]
    _property(schemas, "ArraySpec", "size")["maximum"] = array_max_size
    _property(schemas, "JobSubmit", "kernel")["enum"] = sorted(CATALOGUE)
    schemas["JobSubmit"]["oneOf"] = [
        _kernel_variant(CATALOGUE[name], schemas) for name in sorted(CATALOGUE)
    ]
    _property(schemas, "JobSubmit", "output_tier")["enum"] = tiers
    _property(schemas, "MigrationCreate", "to_tier")["enum"] = tiers
    schemas["MigrationCreate"]["properties"]["dataset"] = {**NAME_SCHEMA, "title": "Dataset"}
    scopes = _branch(_property(schemas, "KeyCreate", "scopes"), "array")
    scopes["items"] = {"type": "string", "enum": list(SCOPES)}
    for path, _method, operation in _operations(doc):
        for parameter in operation.get("parameters", []):
            _describe_parameter(path, parameter, tiers=tiers)
    _describe_upload(doc["paths"]["/v1/datasets/{name}"]["put"])
    _add_links(doc)


def _kernel_variant(spec: KernelSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    """What a submission of one kernel holds: its params (the schema ``GET /v1/kernels``
    serves) and exactly its inputs and outputs, each a dataset name (``{index}`` in it for
    an array's elements)."""
    params = spec.params.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(params.pop("$defs", {}))
    required = ["kernel"]
    required += ["params"] if params.get("required") else []
    required += ["inputs"] if spec.inputs else []
    required += ["outputs"] if spec.outputs else []
    return {
        "title": spec.name,
        "properties": {
            "kernel": {"const": spec.name},
            "params": params,
            "inputs": _datasets(spec.inputs),
            "outputs": _datasets(spec.outputs),
        },
        "required": required,
    }


def _datasets(names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict.fromkeys(names, TEMPLATE_SCHEMA),
        "required": list(names),
        "additionalProperties": False,
    }


def _describe_parameter(path: str, parameter: dict[str, Any], *, tiers: list[str]) -> None:
    name, where = parameter["name"], parameter["in"]
    if where == "path" and name == "name" and path.startswith("/v1/datasets/"):
        parameter["schema"] = {**NAME_SCHEMA, "title": "Name"}
    elif where == "query" and name == "tier":
        _branch(parameter["schema"], "string")["enum"] = tiers
    elif where == "path" and name == "job_id":
        parameter["schema"] = {**parameter["schema"], "pattern": JOB_ID_PATTERN}
    elif where == "query" and name == "cursor" and path.endswith("/elements"):
        pass  # an element index, described by its route
    elif where == "query" and name == "cursor":
        parameter["schema"] = {"anyOf": [CURSOR_SCHEMA, {"type": "null"}], "title": "Cursor"}
        parameter["description"] = (
            "the `next_cursor` of the previous page, as it was given (opaque: any other value "
            "is a 422)"
        )
    elif where == "query" and name == "label":
        _branch(parameter["schema"], "array")["items"] = {"type": "string", "pattern": LABEL_FILTER}


def _describe_upload(operation: dict[str, Any]) -> None:
    """An upload's body is the dataset's bytes; an empty dataset is an empty body sent with
    ``Content-Length: 0``. A request that declares no length at all is a 411."""
    body = operation["requestBody"]
    body["required"] = False
    body["description"] = (
        "the dataset's bytes, streamed (Content-Length or chunked); an empty body with "
        "Content-Length: 0 stores an empty dataset"
    )
    for status, response in problem_responses({411: "no Content-Length, no chunked body"}).items():
        operation["responses"].setdefault(str(status), response)


def _add_links(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    for (method, path, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            name: {
                "operationId": paths[target][target_method]["operationId"],
                "parameters": {parameter: "$response.body#/id"},
            }
            for name, (target_method, target, parameter) in links.items()
        }
    upload = paths["/v1/datasets/{name}"]["put"]["responses"]
    for status in ("200", "201"):
        upload[status]["links"] = {
            name: {
                "operationId": paths[target][target_method]["operationId"],
                "parameters": {"name": "$response.body#/name"},
            }
            for name, (target_method, target) in DATASET_LINKS.items()
        }


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _property(schemas: dict[str, Any], model: str, name: str) -> dict[str, Any]:
    prop: dict[str, Any] = schemas[model]["properties"][name]
    return prop


def _branch(schema: dict[str, Any], type_: str) -> dict[str, Any]:
    """The part of ``schema`` of JSON type ``type_``: itself, or its ``anyOf`` branch (an
    optional value is ``anyOf: [<the value>, null]``)."""
    if schema.get("type") == type_:
        return schema
    for option in schema.get("anyOf", []):
        if option.get("type") == type_:
            found: dict[str, Any] = option
            return found
    raise KeyError(f"no {type_} in {schema}")
