"""Where jobs' checkpoints live on a directory tier: one folder per job under
``<root>/.stratus-checkpoints/``, beside the tenants' folders (the worker writes them,
``services.worker.checkpoint``; the datamover's sweep removes those of final jobs)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

DIR_NAME = ".stratus-checkpoints"


def folder_for(root: str | Path, job_id: uuid.UUID | str) -> Path:
    """The folder of a job's checkpoint under a directory tier's ``root``."""
    return Path(root) / DIR_NAME / str(job_id)


def remove(folder: Path) -> None:
    """A job's checkpoint folder, once the job is final."""
    shutil.rmtree(folder, ignore_errors=True)


def job_folders(root: str | Path) -> dict[uuid.UUID, Path]:
    """The checkpoint folders under a directory tier's ``root``, by job id; names that are
    not job ids are left out."""
    found: dict[uuid.UUID, Path] = {}
    base = Path(root) / DIR_NAME
    if not base.is_dir():
        return found
    for entry in base.iterdir():
        try:
            found[uuid.UUID(entry.name)] = entry
        except ValueError:
            continue
    return found
