"""Kernels and jobs: ``kernels``, ``submit``, ``jobs``, ``show``, ``elements``, ``wait``,
``cancel``. A job id may be an array's or an element's (``ARRAY_ID:INDEX``) wherever the API
takes one."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from itertools import islice
from typing import Annotated, Any

import typer
from rich.table import Table

from stratus_client import ArraySpec, Job, JobState, Receipt
from stratus_client.cli.config import connect
from stratus_client.cli.options import pairs
from stratus_client.cli.output import (
    FAILED,
    JsonOption,
    compact,
    counts_line,
    fields,
    print_json,
    show,
    table,
    when,
)
from stratus_client.cli.progress import follow_job, job_view

MAX_PAGE = 500  # the API's largest page

LimitOption = Annotated[int, typer.Option(min=1, help="Show at most this many.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every page, however many.")]
StateOption = Annotated[JobState | None, typer.Option(help="Only jobs in this state.")]


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"
    any = "any"


class NotifyOn(StrEnum):
    final = "final"
    state = "state"


NotifyOption = Annotated[
    str | None,
    typer.Option(
        "--notify",
        metavar="URL",
        help="POST its events to URL, signed with your webhook secret (made once with "
        "`stratus webhook-secret`).",
    ),
]
NotifyOnOption = Annotated[
    NotifyOn,
    typer.Option(help="With --notify: its final state only, or every change of state."),
]


def webhook(url: str | None, on: NotifyOn) -> dict[str, Any] | None:
    """``--notify URL --notify-on final`` as ``notify``."""
    return None if url is None else {"url": url, "events": [on.value]}


def register(app: typer.Typer) -> None:
    app.command()(kernels)
    app.command()(submit)
    app.command("jobs")(list_jobs)
    app.command("show")(show_job)
    app.command()(elements)
    app.command("wait")(wait_job)
    app.command()(cancel)


def kernels(json_: JsonOption = False) -> None:
    """The kernels the service runs."""
    with connect() as client:
        found = client.kernels()
    if json_:
        print_json(found)
        return
    rows = [
        (k.name, ",".join(k.devices), ",".join(k.inputs), ",".join(k.outputs), k.description)
        for k in found
    ]
    headers = ("NAME", "DEVICES", "INPUTS", "OUTPUTS", "DESCRIPTION")
    show(table(headers, rows, cut={"DESCRIPTION"}))


def submit(
    kernel: Annotated[str, typer.Argument(help="The kernel to run (see `stratus kernels`).")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            help="A parameter; VALUE is read as JSON when it parses (10, 0.5, true, [1,2]), "
            "else as text.",
        ),
    ] = None,
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", metavar="NAME=DATASET", help="An input dataset."),
    ] = None,
    output: Annotated[
        list[str] | None,
        typer.Option("--output", "-o", metavar="NAME=DATASET", help="Where an output goes."),
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Where it runs.")] = None,
    priority: Annotated[int | None, typer.Option(help="0-9, 9 first.")] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds an attempt may run.")] = None,
    retries: Annotated[int | None, typer.Option(help="Tries after a failed one.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", metavar="KEY=VALUE", help="A label.")
    ] = None,
    output_tier: Annotated[str | None, typer.Option(help="The tier of the outputs.")] = None,
    array: Annotated[
        int | None, typer.Option(metavar="N", help="An array of N elements (a sweep).")
    ] = None,
    index_param: Annotated[
        str | None, typer.Option(help="The param set to each element's index.")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="At most this many elements at once.")
    ] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(
            "--depends-on",
            metavar="ID[:CONDITION]",
            help="Start only once job ID reaches CONDITION: afterok (the default), "
            "afternotok, afterany or aftercorr. Repeatable.",
        ),
    ] = None,
    notify: NotifyOption = None,
    notify_on: NotifyOnOption = NotifyOn.final,
    wait: Annotated[bool, typer.Option("--wait", help="Show its progress until it ends.")] = False,
    json_: JsonOption = False,
) -> None:
    """Submit a job, or an array of jobs with --array.

    With --wait, show its progress, then exit 0 once it SUCCEEDED, 1 when it ended
    otherwise."""
    spec = _array(array, index_param, max_concurrent)
    with connect() as client:
        job = client.submit(
            kernel,
            params=pairs(param, "--param", as_json=True) or None,
            inputs=pairs(input_, "--input") or None,
            outputs=pairs(output, "--output") or None,
            device=device,
            priority=priority,
            timeout_s=timeout,
            max_retries=retries,
            labels=pairs(label, "--label") or None,
            output_tier=output_tier,
            array=spec,
            depends_on=dependencies(depends_on),
            notify=webhook(notify, notify_on),
        )
        if wait:
            job = follow_job(client, job)
    if wait:
        finish(job, json_)
    elif json_:
        print_json(job)
    else:
        typer.echo(f"submitted {_kind(job)} {job.id} ({job.state})")


CONDITIONS = ("afterok", "afternotok", "afterany", "aftercorr")


def dependencies(values: list[str] | None) -> list[dict[str, str]] | None:
    """``["ID", "ID:afterany"]`` as ``depends_on``; an element's id ``ARRAY:INDEX`` keeps
    its colon (only a known condition after the last one is read as a condition)."""
    if not values:
        return None
    found = []
    for value in values:
        job, sep, condition = value.rpartition(":")
        if not sep or condition not in CONDITIONS:
            job, condition = value, "afterok"
        if not job:
            raise typer.BadParameter(f"{value!r} names no job", param_hint="--depends-on")
        found.append({"job": job, "condition": condition})
    return found


def _array(
    size: int | None, index_param: str | None, max_concurrent: int | None
) -> ArraySpec | None:
    if size is None:
        if index_param is not None or max_concurrent is not None:
            raise typer.BadParameter("only with --array N", param_hint="--index-param")
        return None
    return ArraySpec(size=size, index_param=index_param, max_concurrent=max_concurrent)


def _kind(job: Job) -> str:
    if job.array is not None:
        return f"array of {job.array.size}"
    return "element" if job.array_id is not None else "job"


def finish(job: Job, json_: bool) -> None:
    """Print the final ``job``; exit 1 unless it SUCCEEDED."""
    if json_:
        print_json(job)
    else:
        typer.echo(f"{job.state} {job.id}")
        if job.array is not None:
            typer.echo(f"elements: {counts_line(job.array.counts)}")
        elif job.error:
            typer.echo(f"error: {job.error}")
        elif job.result is not None:
            typer.echo(f"result: {compact(job.result)}")
    if not job.succeeded:
        raise typer.Exit(FAILED)


def list_jobs(
    state: StateOption = None,
    kernel: Annotated[str | None, typer.Option(help="Only jobs of this kernel.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE", help="Only jobs with this label."),
    ] = None,
    limit: LimitOption = 20,
    all_: AllOption = False,
    json_: JsonOption = False,
) -> None:
    """Your jobs and arrays, newest first (an array's elements: `stratus elements`)."""
    labels = pairs(label, "--label") or None
    with connect(page_size=MAX_PAGE if all_ else min(limit, MAX_PAGE)) as client:
        found = client.list(state=state, kernel=kernel, labels=labels)
        items = list(found if all_ else islice(found, limit))
    if json_:
        print_json(items)
        return
    show(jobs_table(items))


def jobs_table(items: list[Job]) -> Table:
    """Jobs and arrays, one a row; DONE is an array's final elements over its size."""
    rows = [
        (j.id, j.state, j.kernel, job_view(j)["done"], when(j.created_at, short=True))
        for j in items
    ]
    return table(("ID", "STATE", "KERNEL", "DONE", "CREATED"), rows, cut={"KERNEL"})


def show_job(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job, array or element id.")],
    json_: JsonOption = False,
) -> None:
    """One job, array (with its elements' counts) or element."""
    with connect() as client:
        job = client.get(job_id)
    if json_:
        print_json(job)
    else:
        show(fields(_rows(job)))


def _rows(job: Job) -> Iterator[tuple[str, Any]]:
    reason = f" ({job.state_reason})" if job.state_reason else ""
    yield "id", job.id
    yield "kernel", job.kernel
    yield "state", job.state + reason
    if job.array is not None:
        yield from _array_rows(job)
    if job.array_id is not None:
        yield "array", f"{job.array_id} index {job.array_index}"
    yield "device", job.device + (f" (on {job.assigned_device})" if job.assigned_device else "")
    yield "priority", job.priority
    for name in ("params", "inputs", "outputs", "labels"):
        if value := getattr(job, name):
            yield name, compact(value)
    if job.array is None:
        yield "attempts", job.attempts
        yield "worker", job.worker
    yield "created", when(job.created_at)
    yield "started", when(job.started_at)
    yield "finished", when(job.finished_at)
    if job.progress is not None and not job.is_final:
        yield "progress", f"{job.progress:.0%}"
    if job.result is not None:
        yield "result", compact(job.result)
    if job.error:
        yield "error", job.error
    if job.workflow_id:
        yield "workflow", job.workflow_id
    for dep in job.depends_on or []:
        yield "depends on", f"{dep.get('job')} ({dep.get('condition')})"
    if job.receipt is not None:
        yield from _receipt_rows(job.receipt)


def _receipt_rows(receipt: Receipt) -> Iterator[tuple[str, Any]]:
    """A SUCCEEDED job's provenance: what ran, where, on which bytes."""
    version = f" {receipt.kernel_version}" if receipt.kernel_version else ""
    yield "receipt", f"{receipt.kernel}{version} on {receipt.device or '-'}"
    yield "  worker", receipt.worker
    if receipt.cpu_seconds is not None:
        yield "  cpu_seconds", f"{receipt.cpu_seconds:.3f}"
    for side in ("inputs", "outputs"):
        for name, ref in getattr(receipt, side).items():
            yield f"  {side[:-1]} {name}", f"{ref.get('dataset')} {ref.get('checksum') or '-'}"
    if receipt.software:
        yield "  software", " ".join(f"{k} {v}" for k, v in sorted(receipt.software.items()))


def _array_rows(job: Job) -> Iterator[tuple[str, Any]]:
    assert job.array is not None
    a = job.array
    yield "size", a.size
    if a.index_param:
        yield "index_param", a.index_param
    if a.max_concurrent:
        yield "max_concurrent", a.max_concurrent
    yield "done", job_view(job)["done"]
    yield "elements", counts_line(a.counts)


def elements(
    array_id: Annotated[str, typer.Argument(metavar="ARRAY_ID")],
    state: StateOption = None,
    limit: LimitOption = 50,
    all_: AllOption = False,
    json_: JsonOption = False,
) -> None:
    """An array's elements, in index order.

    Listed: the elements the scheduler has started, and any cancelled."""
    with connect(page_size=MAX_PAGE if all_ else min(limit, MAX_PAGE)) as client:
        found = client.elements(array_id, state=state)
        items = list(found if all_ else islice(found, limit))
    if json_:
        print_json(items)
        return
    rows = [
        (str(e.array_index), e.state, str(e.attempts), e.worker or "", _outcome(e)) for e in items
    ]
    show(table(("INDEX", "STATE", "TRIES", "WORKER", "RESULT"), rows, cut={"WORKER", "RESULT"}))


def _outcome(job: Job) -> str:
    return job.error or ("" if job.result is None else compact(job.result))


def wait_job(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job, array or element id.")],
    json_: JsonOption = False,
) -> None:
    """Show a job's (an array's) progress until it ends.

    Exit 0 once it SUCCEEDED, 1 when it ended otherwise."""
    with connect() as client:
        job = follow_job(client, client.get(job_id))
    finish(job, json_)


def cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job, array or element id.")],
    json_: JsonOption = False,
) -> None:
    """Cancel a job, an element, or every element of an array that has not ended."""
    with connect() as client:
        job = client.cancel(job_id)
    if json_:
        print_json(job)
    else:
        typer.echo(f"cancelling {job.id} ({job.state})")
