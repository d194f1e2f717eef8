"""Sweeping abandoned partial objects: S3 multipart uploads (and temporary files on directory
tiers) that no live migration owns and that are older than ``sweep_after_s``; and the
checkpoints of jobs that are final (``sweep_checkpoints``).

A partial object is abandoned when its writer died before publishing or aborting it (a gateway
upload cut off by a crash, a migration whose abort failed during an outage). S3 keeps the
parts of such an upload, billed and invisible, until someone aborts it. The age is what keeps
live writers safe: a gateway upload is not recorded anywhere while it streams, and a migration
records its upload a moment after beginning it, so ``sweep_after_s`` must be longer than any
upload may take (a day by default). Uploads of PENDING or RUNNING migrations are never swept,
however old. Several datamovers may sweep at once: aborting twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Migration
from shared.events import utcnow
from shared.jobs.states import FINAL
from shared.logging import get_logger
from shared.storage import Storage, Upload
from shared.storage import checkpoints as checkpoint
from shared.storage.migrations import MigrationState

FINAL_STATES = [s.value for s in FINAL]

log = get_logger(__name__)


async def sweep_checkpoints(
    *, sessions: async_sessionmaker[AsyncSession], storage: Storage, after_s: float = 60.0
) -> int:
    """Remove the checkpoints of jobs that are final or gone (a job cancelled or failed while
    it waited: the worker that removes a finished job's checkpoint never saw it end), each
    left alone for ``after_s`` after its last write; how many were removed."""
    removed = 0
    for ts in storage.settings.tiers().values():
        if ts.kind != "file":
            continue
        folders = await asyncio.to_thread(checkpoint.job_folders, ts.root)
        if not folders:
            continue
        async with sessions() as session:
            live = set(
                await session.scalars(
                    select(Job.id).where(Job.id.in_(list(folders)), Job.state.not_in(FINAL_STATES))
                )
            )
        cutoff = time.time() - after_s
        for job_id, folder in folders.items():
            if job_id in live or _touched_since(folder, cutoff):
                continue
            await asyncio.to_thread(checkpoint.remove, folder)
            removed += 1
            log.info("checkpoint_swept", job_id=str(job_id))
    return removed


def _touched_since(folder: Path, cutoff: float) -> bool:
    try:
        return folder.stat().st_mtime > cutoff
    except OSError:
        return False


async def owned_uploads(*, session: AsyncSession, tier: str) -> set[str]:
    """The partial objects on ``tier`` that live migrations are writing (``Upload.ref``)."""
    rows = await session.execute(
        select(Migration.upload).where(
            Migration.to_tier == tier,
            Migration.state.in_([MigrationState.PENDING.value, MigrationState.RUNNING.value]),
            Migration.upload.is_not(None),
        )
    )
    return {Upload.from_json(upload).ref for upload in rows.scalars() if upload}


async def sweep(
    *, sessions: async_sessionmaker[AsyncSession], storage: Storage, after_s: float
) -> int:
    """Abort every abandoned partial object older than ``after_s``; how many were aborted.
    A tier that cannot be listed is skipped (and counted by its circuit breaker)."""
    older_than = utcnow() - timedelta(seconds=after_s)
    aborted = 0
    for name, tier in storage.tiers.items():
        try:
            found = await storage.call(name, lambda t=tier: t.partial_uploads(older_than))  # type: ignore[misc]
        except Exception as exc:
            log.warning("sweep_list_failed", tier=name, error=type(exc).__name__)
            continue
        if not found:
            continue
        async with sessions() as session:  # read after listing: an upload listed and
            owned = await owned_uploads(session=session, tier=name)  # recorded since is seen
        for upload in found:
            if upload.ref in owned:
                continue
            try:
                await storage.call(name, lambda t=tier, u=upload: t.abort(u))  # type: ignore[misc]
            except Exception as exc:
                log.warning("sweep_abort_failed", tier=name, error=type(exc).__name__)
                continue
            aborted += 1
            log.info("partial_upload_swept", tier=name, key=upload.key, ref=upload.ref)
    try:
        await sweep_checkpoints(sessions=sessions, storage=storage)
    except Exception as exc:
        log.warning("checkpoint_sweep_failed", error=type(exc).__name__)
    return aborted
