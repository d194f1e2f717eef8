"""Where a job's datasets are on this worker's disk.

Inputs: a dataset ``name`` of tenant ``t`` is the file ``<local root>/<t>/<name>`` of the
``local`` tier (``shared.storage.names.local_dataset_path``, the layout the gateway and the
datamover use). The scheduler stages an input held on another tier in to ``local`` before
it dispatches the job, so a missing file here fails the job (not retried).

Outputs: a kernel writes each output into a folder of the attempt under the scratch tier's
temporary folder (``<local root>/.stratus-tmp/jobs/<job>-<attempt>/``, ``AttemptFiles``), on
that tier's filesystem, so that recording the attempt publishes it with a rename
(``shared.storage.catalog.publish_local_file``). Whatever is left there after the record
(a failed, refused or abandoned attempt) is removed with the folder.
"""

from __future__ import annotations

import functools
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Invalid
from shared.jobs.store import Claim
from shared.settings import StorageSettings
from shared.storage.names import local_dataset_path, name_problem
from shared.storage.tiers import TEMP_DIR

INPUT_TIER = "local"
# The tier on whose filesystem kernels write their outputs: a job whose ``output_tier`` is
# this one publishes them with a rename, any other tier gets a copy (``stageout``).
SCRATCH_TIER = "local"
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
    """Where an attempt's kernel writes its outputs (and a large result): on the scratch
    tier's filesystem."""
    root = _resolved(storage.tiers()[SCRATCH_TIER].root)
    return root / TEMP_DIR / "jobs" / f"{job_id}-{attempt}"


@functools.cache
def _resolved(root: str) -> Path:
    """``root`` as an absolute path, once per process (every attempt asks: no syscalls)."""
    return Path(root).resolve()


@dataclass(frozen=True)
class AttemptFiles:
    """The files an attempt's kernel writes, in the attempt's folder: each output (slot -> a
    temporary file) and a result too large for the job's row."""

    folder: Path
    outputs: dict[str, Path]

    @property
    def result(self) -> Path:
        return self.folder / "result.json"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def attempt_files(storage: StorageSettings, claim: Claim) -> AttemptFiles:
    """The files of the attempt ``claim`` runs."""
    folder = attempt_folder(storage, claim.job_id, claim.attempt)
    return AttemptFiles(
        folder,
        {
            slot: folder / f"{i}-{_SLOT.sub('_', slot)[:64]}.npy"
            for i, slot in enumerate(sorted(claim.outputs))
        },
    )


def check_output_names(
    tenant_id: uuid.UUID, names: Mapping[str, str], *, storage: StorageSettings
) -> None:
    """``InvalidDatasetName`` for an output name the job may not write (checked before any
    compute, so that a bad one fails the job at once)."""
    resolve_paths(tenant_id, names, storage=storage, tier=SCRATCH_TIER)
