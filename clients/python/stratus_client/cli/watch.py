"""``stratus watch``: the jobs and arrays that have not ended, as a table redrawn after each
look at the service (once a second by default) until Ctrl-C."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from itertools import islice
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stratus_client import Client, Job
from stratus_client.cli.config import connect
from stratus_client.cli.jobs import jobs_table
from stratus_client.cli.output import JsonOption, print_json, show, stdout

OPEN_STATES = ("RUNNING", "QUEUED", "PENDING")
PER_STATE = 50  # one page of each state: what fits a screen, and a bounded cost per look


def register(app: typer.Typer) -> None:
    app.command()(watch)


def open_jobs(client: Client) -> list[Job]:
    """The tenant's jobs and arrays that have not ended: running ones first, then newest
    first, at most ``PER_STATE`` of each state."""
    found: list[Job] = []
    for state in OPEN_STATES:
        found += islice(client.list(state=state), PER_STATE)
    return found


def render(jobs: list[Job]) -> Group:
    now = datetime.now(UTC).strftime("%H:%M:%SZ")
    head = Text(f"{len(jobs)} not ended · {now} · Ctrl-C to stop", style="dim")
    return Group(head, jobs_table(jobs) if jobs else Table.grid())


def watch(
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between looks at the service.")
    ] = 1.0,
    json_: JsonOption = False,
) -> None:
    """A live table of your jobs and arrays that have not ended.

    Redrawn after each look at the service until Ctrl-C; with --once or --json, one look
    (--json prints it as a JSON array)."""
    with connect(page_size=PER_STATE) as client:
        if once or json_:
            jobs = open_jobs(client)
            if json_:
                print_json(jobs)
            else:
                show(render(jobs))
            return
        with Live(render(open_jobs(client)), console=stdout(), auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(render(open_jobs(client)), refresh=True)
            except KeyboardInterrupt:
                pass
