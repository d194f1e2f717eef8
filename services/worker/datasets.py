"""Where a job's datasets are on this worker's disk.

``resolve_paths`` is the seam the datasets issue replaces: until datasets have a storage
service, a dataset ``name`` of tenant ``t`` is the file ``STRATUS_DATA_ROOT/<t>/<name>``.
The datasets issue swaps the body for "fetch or locate the dataset in its tier, return a
local path" (``shared.storage.names.local_dataset_path``, being written, has the same
``<root>/<tenant_id>/<name>`` layout) and keeps the signature.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9._/-]{1,255}")


class InvalidDatasetName(ValueError):
    """A dataset name outside the contract's rules (the job fails, not retried)."""


def check_name(name: str) -> str:
    segments = name.split("/")
    if not NAME.fullmatch(name) or {"", ".", ".."} & set(segments):
        raise InvalidDatasetName(
            f"invalid dataset name {name!r}: 1-255 characters of [A-Za-z0-9._/-], "
            "no leading '/', no empty, '.' or '..' segment"
        )
    return name


def resolve_paths(tenant_id: uuid.UUID, names: Mapping[str, str], *, root: Path) -> dict[str, Path]:
    """Kernel input or output name -> local path of the tenant's dataset it names."""
    base = root / str(tenant_id)
    return {slot: base / check_name(name) for slot, name in names.items()}
