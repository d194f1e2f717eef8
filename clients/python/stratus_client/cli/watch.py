"""``stratus watch``: the jobs and arrays that have not ended, as a live table until Ctrl-C.

The table is read again when the tenant's event stream (``GET /v1/events``, read in a thread
on a client of its own) brings a change: ``SETTLE_S`` after the first event, so that a burst
of changes costs one look, not one per event. Without events it is read again every
``--interval`` seconds all the same: a job stored QUEUED at submission has no event of its
own (it shows at the next look), an array run in chunks may count its elements without an
event each, and a gateway without the stream leaves only the interval."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from itertools import islice
from typing import Annotated, Final

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
SETTLE_S: Final = 0.25  # after an event, the wait for the rest of its burst before a look
OPEN_S: Final = 10.0  # the longest wait for the stream to open before the first look


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


class Changes:
    """Whether the tenant's events brought a change since the last look. The stream is
    opened before the first look (so no change after that look is missed) and read in a
    daemon thread (it ends with the command). A stream that cannot be opened or read (an
    older gateway, an outage longer than the client's retries) leaves the interval alone."""

    def __init__(self, client: Client) -> None:
        self._changed = threading.Event()
        self._opened = threading.Event()
        self.stream_failed: Exception | None = None
        self._thread = threading.Thread(target=self._read, args=(client,), daemon=True)
        self._thread.start()
        self._opened.wait(OPEN_S)

    def _read(self, client: Client) -> None:
        try:
            for _event in client.events(on_open=self._opened.set):
                self._changed.set()
        except Exception as exc:  # an outage past the retries, or the client closed at exit
            self.stream_failed = exc
        finally:
            self._opened.set()

    def wait(self, interval: float) -> None:
        """Until an event came and ``SETTLE_S`` more passed, or ``interval`` without one."""
        if self._changed.wait(interval):
            time.sleep(SETTLE_S)
        self._changed.clear()


def watch(
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit.")] = False,
    interval: Annotated[
        float,
        typer.Option(min=0.2, help="Seconds between looks when no event brings a change."),
    ] = 2.0,
    json_: JsonOption = False,
) -> None:
    """A live table of your jobs and arrays that have not ended.

    Redrawn when your events bring a change (and every --interval seconds without one)
    until Ctrl-C; with --once or --json, one look (--json prints it as a JSON array)."""
    with connect(page_size=PER_STATE) as client:
        if once or json_:
            jobs = open_jobs(client)
            if json_:
                print_json(jobs)
            else:
                show(render(jobs))
            return
        with connect() as stream:
            changes = Changes(stream)
            with Live(render(open_jobs(client)), console=stdout(), auto_refresh=False) as live:
                try:
                    while True:
                        changes.wait(interval)
                        live.update(render(open_jobs(client)), refresh=True)
                except KeyboardInterrupt:
                    pass
