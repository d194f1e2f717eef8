"""A job's result too large to keep in its row.

A result whose JSON is larger than ``limits.result_inline_max_bytes`` is written by the pool
process into the attempt's folder (``AttemptFiles.result``) and published, with the job's outputs
and in the transaction that records the job SUCCEEDED, as the tenant's dataset
``results/<job id>.json`` on the ``local`` tier (counted in the tenant's storage like any
dataset). The job's ``result`` is then a small object naming it: ``{"dataset", "size",
"checksum"}``. So a job row, and every list of jobs, holds at most a small result.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from services.worker.datasets import AttemptFiles
from services.worker.runner import ResultFile
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim

RESULTS_FOLDER = "results"
POINTER_KEYS = frozenset({"dataset", "size", "checksum"})


def result_name(job_id: uuid.UUID) -> str:
    """The dataset that holds the result of job ``job_id``."""
    return f"{RESULTS_FOLDER}/{job_id}.json"


def pointer(job_id: uuid.UUID, file: ResultFile) -> dict[str, Any]:
    """The job's ``result`` when the result itself is the dataset ``result_name``."""
    return {"dataset": result_name(job_id), "size": file.size, "checksum": file.checksum}


def stored_file(claim: Claim, report: Report, files: AttemptFiles) -> Path | None:
    """The file to publish as the result's dataset, when ``report`` is a success whose
    result points to it (no kernel can name that dataset: it does not know its job's id)."""
    result = report.result
    if report.state is not JobState.SUCCEEDED or result is None:
        return None
    if set(result) != POINTER_KEYS or result["dataset"] != result_name(claim.job_id):
        return None
    return files.result
