"""Where a job's datasets are on this worker's disk.

Inputs: a dataset ``name`` of tenant ``t`` is the file ``<local root>/<t>/<name>`` of the
``local`` tier (``shared.storage.names.local_dataset_path``, the layout the gateway and the
datamover use). The scheduler stages an input held on another tier in to ``local`` before
it dispatches the job, so a missing file here fails the job (not retried).

Outputs: a kernel writes each output into a folder of the attempt under the tier's
temporary folder (``<local root>/.stratus-tmp/jobs/<job>-<attempt>/``), on the tier's
filesystem, so that recording the attempt publishes it with a rename
(``shared.storage.catalog.publish_local_file``). Whatever is left there after the record
(a failed, refused or abandoned attempt) is removed with the folder.
"""

from __future__ import annotations

import functools
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from shared.errors import Invalid
from shared.settings import StorageSettings
from shared.storage.names import local_dataset_path, name_problem
from shared.storage.tiers import TEMP_DIR

INPUT_TIER = "local"
OUTPUT_TIER = "local"
_SLOT = re.compile(r"[^A-Za-z0-9_-]")


class DatasetError(ValueError):
    """A job's dataset that cannot be used: the job fails with this message, not retried."""


class InvalidDatasetName(DatasetError):
    """A dataset name outside the contract's rules, or one that escapes the tenant's prefix."""


class MissingDataset(DatasetError):
    """An input dataset that is not on this worker's ``local`` tier."""


def resolve_paths(
    tenant_id: uuid.UUID,
    names: Mapping[str, str],
    *,
    storage: StorageSettings,
    tier: str = INPUT_TIER,
) -> dict[str, Path]:
    """Kernel input or output name -> the file of the tenant's dataset it names on ``tier``."""
    paths = {}
    for slot, name in names.items():
        problem = name_problem(name)
        if problem is not None:
            raise InvalidDatasetName(f"invalid dataset name {name!r}: {problem}")
        try:
            paths[slot] = local_dataset_path(storage, tenant_id, name, tier=tier)
        except Invalid as exc:
            raise InvalidDatasetName(f"invalid dataset name {name!r}: {exc.detail}") from None
    return paths


def input_paths(
    tenant_id: uuid.UUID, names: Mapping[str, str], *, storage: StorageSettings
) -> dict[str, Path]:
    """The files of a job's inputs; ``MissingDataset`` for one that is not there."""
    paths = resolve_paths(tenant_id, names, storage=storage)
    for slot, path in paths.items():
        if not path.is_file():
            raise MissingDataset(
                f"input {slot!r}: dataset {names[slot]!r} not found on the {INPUT_TIER!r} tier"
            )
    return paths


def missing_files(paths: Mapping[str, str | Path]) -> list[str]:
    """The names whose file does not exist (outputs a kernel said it wrote)."""
    return [slot for slot, path in paths.items() if not Path(path).is_file()]


def attempt_folder(storage: StorageSettings, job_id: uuid.UUID, attempt: int) -> Path:
    """Where an attempt's kernel writes its outputs (and a large result): on the output
    tier's filesystem."""
    root = _resolved(storage.tiers()[OUTPUT_TIER].root)
    return root / TEMP_DIR / "jobs" / f"{job_id}-{attempt}"


@functools.cache
def _resolved(root: str) -> Path:
    """``root`` as an absolute path, once per process (every attempt asks: no syscalls)."""
    return Path(root).resolve()


def output_paths(
    tenant_id: uuid.UUID,
    names: Mapping[str, str],
    *,
    storage: StorageSettings,
    job_id: uuid.UUID,
    attempt: int,
) -> dict[str, Path]:
    """Kernel output name -> the temporary file the kernel writes (the names are checked
    first, so a bad one fails the job before any compute)."""
    if not names:
        return {}
    resolve_paths(tenant_id, names, storage=storage, tier=OUTPUT_TIER)
    folder = attempt_folder(storage, job_id, attempt)
    return {
        slot: folder / f"{i}-{_SLOT.sub('_', slot)[:64]}.npy"
        for i, slot in enumerate(sorted(names))
    }


def remove_attempt_folder(storage: StorageSettings, job_id: uuid.UUID, attempt: int) -> None:
    shutil.rmtree(attempt_folder(storage, job_id, attempt), ignore_errors=True)
