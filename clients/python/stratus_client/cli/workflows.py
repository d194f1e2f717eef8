"""Workflows: ``workflow submit FILE``, ``workflow show``, ``workflow ls``, ``workflow
cancel``. A workflow file is YAML (or JSON, a subset of YAML) with ``name`` and ``steps``
exactly as the body of ``POST /v1/workflows``."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from stratus_client import Workflow
from stratus_client.cli.config import connect
from stratus_client.cli.jobs import NotifyOn, NotifyOnOption, NotifyOption, webhook
from stratus_client.cli.output import (
    FAILED,
    USAGE,
    JsonOption,
    counts_line,
    fail,
    fields,
    print_json,
    show,
    table,
    when,
)

MAX_PAGE = 500  # the API's largest page

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="A workflow's id.")]

workflow_app = typer.Typer(
    name="workflow",
    help="Workflows: named graphs of jobs, submitted at once from a YAML file.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(workflow_app)


def read_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``name`` and ``steps`` of a workflow file; a file that is not one is a usage error."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        fail(f"cannot read {path}: {' '.join(str(error).split())}", USAGE)
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), dict):
        fail(f"{path}: not a workflow (a mapping with `name` and `steps`)", USAGE)
    extra = sorted(set(doc) - {"name", "steps"})
    if extra:
        fail(f"{path}: unknown keys {', '.join(map(str, extra))} (only `name`, `steps`)", USAGE)
    return str(doc.get("name", path.stem)), doc["steps"]


@workflow_app.command("submit")
def submit(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="YAML or JSON: `name` and `steps` as the API's."),
    ],
    notify: NotifyOption = None,
    notify_on: NotifyOnOption = NotifyOn.final,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every step has ended.")] = False,
    json_: JsonOption = False,
) -> None:
    """Submit a workflow from FILE.

    --notify gives each step that names no `notify` of its own that webhook. With --wait,
    exit 0 once it SUCCEEDED, 1 when it ended otherwise."""
    name, steps = read_file(file)
    if (hook := webhook(notify, notify_on)) is not None:
        steps = {
            k: {**s, "notify": hook} if isinstance(s, dict) and "notify" not in s else s
            for k, s in steps.items()
        }
    with connect() as client:
        workflow = client.submit_workflow(name, steps)
        if wait:
            typer.echo(f"waiting for workflow {workflow.id} ...", err=True)
            workflow = client.wait_workflow(workflow.id)
    if wait:
        finish(workflow, json_)
    elif json_:
        print_json(workflow)
    else:
        typer.echo(f"submitted workflow {workflow.id} ({workflow.state})")
        show(_steps_table(workflow))


def finish(workflow: Workflow, json_: bool) -> None:
    """Print the final ``workflow``; exit 1 unless it SUCCEEDED."""
    if json_:
        print_json(workflow)
    else:
        typer.echo(f"{workflow.state} {workflow.id}")
        typer.echo(f"steps: {counts_line(workflow.counts)}")
    if not workflow.succeeded:
        raise typer.Exit(FAILED)


def _steps_table(workflow: Workflow) -> Any:
    rows = sorted(workflow.steps.items())
    return table(("STEP", "JOB"), rows, cut={"STEP"})


@workflow_app.command("show")
def show_workflow(workflow_id: IdArgument, json_: JsonOption = False) -> None:
    """One workflow: its state, its steps' counts and each step's job id."""
    with connect() as client:
        workflow = client.get_workflow(workflow_id)
    if json_:
        print_json(workflow)
        return
    show(fields(_rows(workflow)))
    show(_steps_table(workflow))


def _rows(workflow: Workflow) -> Iterator[tuple[str, Any]]:
    yield "id", workflow.id
    yield "name", workflow.name
    yield "state", workflow.state
    yield "steps", counts_line(workflow.counts)
    yield "created", when(workflow.created_at)
    yield "finished", when(workflow.finished_at)


@workflow_app.command("ls")
def list_workflows(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
    all_: Annotated[bool, typer.Option("--all", help="Every page, however many.")] = False,
    json_: JsonOption = False,
) -> None:
    """Your workflows, newest first."""
    with connect(page_size=MAX_PAGE if all_ else min(limit, MAX_PAGE)) as client:
        found = client.list_workflows()
        items = list(found if all_ else islice(found, limit))
    if json_:
        print_json(items)
        return
    rows = [
        (w.id, w.state, counts_line(w.counts), w.name, when(w.created_at, short=True))
        for w in items
    ]
    show(table(("ID", "STATE", "STEPS", "NAME", "CREATED"), rows, cut={"STEPS", "NAME"}))


@workflow_app.command("cancel")
def cancel(workflow_id: IdArgument, json_: JsonOption = False) -> None:
    """Cancel every step of a workflow that has not ended."""
    with connect() as client:
        workflow = client.cancel_workflow(workflow_id)
    if json_:
        print_json(workflow)
    else:
        typer.echo(f"cancelling workflow {workflow.id} ({workflow.state})")
