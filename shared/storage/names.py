"""Dataset names and where they live: every object is ``<tenant_id>/<name>`` under a tier.

A name that could leave the tenant's prefix is refused before any storage call.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from shared.errors import Invalid
from shared.settings import StorageSettings

MAX_NAME = 255
NAME_CHARS = "A-Za-z0-9._/-"
# For filters (a name, or the start of one): only the characters a name may contain. A
# filter with any other character (a NUL, say) could match nothing: it is a 422.
NAME_CHARS_PATTERN = rf"^[{NAME_CHARS}]*$"
_ALLOWED = re.compile(rf"[{NAME_CHARS}]+")
# ``name_problem``'s rule as one regular expression, for the OpenAPI document (which cannot
# hold a function): segments of ``[A-Za-z0-9._-]`` that are not ``.`` or ``..``, joined by
# ``/``. A test holds the two to the same answers.
_SEGMENT = r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)"
NAME_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": NAME_PATTERN}


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid dataset name, or ``None`` when it is."""
    if not 1 <= len(name) <= MAX_NAME:
        return f"must be 1 to {MAX_NAME} characters"
    if not _ALLOWED.fullmatch(name):
        return "may only contain letters, digits, '.', '_', '-' and '/'"
    if name.startswith("/"):
        return "must not start with '/'"
    for segment in name.split("/"):
        if segment == "":
            return "must not contain an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"must not contain a {segment!r} segment"
    return None


def validate_name(name: str, *, loc: tuple[str, ...] = ("path", "name")) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise Invalid(
            f"invalid dataset name: {problem}", errors=[{"loc": list(loc), "msg": problem}]
        )
    return name


def object_key(tenant_id: uuid.UUID, name: str) -> str:
    """The object's key relative to a tier's root: ``<tenant_id>/<name>``."""
    return f"{uuid.UUID(str(tenant_id))}/{validate_name(name)}"


def local_dataset_path(
    settings: StorageSettings, tenant_id: uuid.UUID, name: str, *, tier: str = "local"
) -> Path:
    """The file of a tenant's dataset on a directory tier (``local`` by default): the worker's
    ``resolve_paths`` seam. It says where the file is or will be; whether the dataset is on
    that tier is the catalogue's business (``Dataset.tiers``)."""
    tiers = settings.tiers()
    if tier not in tiers or tiers[tier].kind != "file":
        raise ValueError(f"tier {tier!r} is not a directory tier")
    root = Path(tiers[tier].root).resolve()
    path = (root / object_key(tenant_id, name)).resolve()
    if not path.is_relative_to(root / str(tenant_id)):
        raise Invalid("dataset name escapes the tenant's prefix")
    return path
