"""Live progress on stderr (stdout stays the command's answer): a job's state and progress,
an array's final elements over its size, a migration's bytes, an upload's or a download's
bytes and rate. How a job is followed is the SDK's ``watch`` (the job's events, or polling
on a gateway without them): a change there reaches every bar here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from stratus_client import FINAL_STATES, Client, Job, Migration
from stratus_client.cli.output import stderr

FAILED_STATES = ("FAILED", "TIMED_OUT", "CANCELLED")


def short(identifier: str, width: int = 20) -> str:
    """A name or id cut to ``width`` (its start is what tells ids apart)."""
    return identifier if len(identifier) <= width else identifier[: width - 1] + "…"


def _status_bar() -> Progress:
    return Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[done]}", justify="right"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=stderr(),
    )


def job_view(job: Job) -> dict[str, Any]:
    """The bar's fields for ``job``: an array counts its final elements over its size, a job
    shows its ``progress`` (a pulsing bar until it reports one)."""
    if job.array is not None:
        counts = job.array.counts
        final = sum(counts.get(state, 0) for state in FINAL_STATES)
        status = [job.state]
        if running := counts.get("RUNNING", 0):
            status.append(f"{running} running")
        if failed := sum(counts.get(state, 0) for state in FAILED_STATES):
            status.append(f"{failed} not ok")
        size = job.array.size
        return {"total": size, "completed": final, "done": f"{final}/{size}", "status": status}
    if job.is_final:
        return {"total": 1, "completed": 1, "done": "", "status": [job.state]}
    if job.progress is not None:
        done = f"{job.progress:.0%}"
        return {"total": 1, "completed": job.progress, "done": done, "status": [job.state]}
    return {"total": None, "completed": 0, "done": "", "status": [job.state]}


def follow_job(client: Client, job: Job) -> Job:
    """Show ``job`` (or an array) until it is final; the final job."""
    kind = "array" if job.array is not None else "job"
    with _status_bar() as bar:
        view = job_view(job)
        task = bar.add_task(f"{kind} {short(job.id, 8)}", **_fields(view))
        for seen in client.watch(job.id):
            bar.update(task, **_fields(job_view(seen)))
            job = seen
    return job


def _fields(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "status": " · ".join(view["status"])}


def follow_migration(client: Client, migration: Migration) -> Migration:
    """Show the migration's bytes until it is final; the final migration."""
    with Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[status]}"),
        console=stderr(),
    ) as bar:
        task = bar.add_task(short(migration.dataset), total=None, status=migration.state)
        for seen in client.watch_migration(migration.id):
            total = seen.bytes_total or None
            bar.update(task, total=total, completed=seen.bytes_done, status=seen.state)
            migration = seen
    return migration


@contextmanager
def transfer(name: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` bytes with its rate; yields what to call with the bytes done."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
    ) as bar:
        task = bar.add_task(short(name), total=total)
        yield lambda done: bar.update(task, completed=done)
