"""What happened and what happens: ``events`` (the live feed, one line an event), ``logs`` (a
job's log, ``-f`` until it ends), ``history`` (a job's changes of state and its attempts)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated

import typer

from stratus_client import FINAL_STATES, ApiError, Client, Event
from stratus_client.cli.config import connect
from stratus_client.cli.output import JsonOption, fields, plain, print_json, show, table, when
from stratus_client.cli.progress import short

SUBJECTS = ("job", "migration", "workflow")


def register(app: typer.Typer) -> None:
    app.command()(events)
    app.command()(logs)
    app.command()(history)


def events(
    job: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Only this job's, array's or workflow's events."),
    ] = None,
    after: Annotated[
        str | None, typer.Option(metavar="EVENT_ID", help="Start after this event.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON document a line: id, event, data.")
    ] = False,
) -> None:
    """Your events as they happen, one line each, until Ctrl-C.

    A line: the event's id (for --after), its time, what changed and its new state or
    progress. With --job, it ends once that job ends (at once when it has ended already and
    no --after is given: its events are then read with --after 0). A dropped connection is
    opened again where it stopped: nothing is missed, nothing is shown twice."""
    seen = 0
    with connect() as client:
        if job is not None and after is None and (state := final_state(client, job)):
            typer.echo(f"{job} has ended {state}; its events: --after 0", err=True)
            return
        try:
            for event in client.events(job=job, after=after):
                typer.echo(json.dumps(event_json(event)) if json_ else event_line(event))
                seen += 1
                if (limit is not None and seen >= limit) or ends(event, job):
                    return
        except KeyboardInterrupt:
            pass


def final_state(client: Client, subject: str) -> str | None:
    """The state of the job (array, element) or workflow ``subject`` if it is final."""
    try:
        state = str(client.get(subject).state)
    except ApiError as error:
        if error.status != 404:
            raise
        state = client.get_workflow(subject).state  # neither: the API's 404, exit 3
    return state if state in FINAL_STATES else None


def event_json(event: Event) -> dict[str, object]:
    return {"id": event.id, "event": event.type, "data": event.data}


def event_line(event: Event) -> str:
    """``41 10:00:02 job 3f2a…:7 RUNNING``: within 80 columns for any id the API makes."""
    kind = next((s for s in SUBJECTS if f"{s}_id" in event.data), event.type.split(".")[0])
    subject = str(event.data.get(f"{kind}_id", "-"))
    progress = event.progress
    change = event.state or event.type if progress is None else f"{progress:.0%}"
    at = _clock(event.data.get("at"))
    return f"{event.id or '-'} {at} {kind} {short(subject, 44)} {change}"


def _clock(at: object) -> str:
    try:
        return datetime.fromisoformat(str(at)).strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def ends(event: Event, job: str | None) -> bool:
    """The followed job (or array, or workflow) is final: its feed has no more to say."""
    if job is None or event.state not in FINAL_STATES:
        return False
    return job in (event.job_id, event.data.get("workflow_id"))


def logs(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job or element id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing lines until the job ends.")
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON document a line: at, attempt, text.")
    ] = False,
) -> None:
    """A job's log: staging, kernel progress, checkpoints, errors, every attempt.

    With -f, lines are printed as they are written, and the command ends once the job
    has ended (or at Ctrl-C)."""
    with connect() as client:
        if not follow:
            text = client.log(job_id)
            if not json_:
                typer.echo(text, nl=False)
                return
            for line in text.splitlines():
                typer.echo(json.dumps(log_json(line)))
            return
        try:
            for line in client.follow_log(job_id):
                typer.echo(json.dumps(log_json(line)) if json_ else line)
        except KeyboardInterrupt:
            pass


_LOG_LINE = re.compile(r"(?P<at>\S+) \[attempt (?P<attempt>\d+)\] (?P<text>.*)")


def log_json(line: str) -> dict[str, object]:
    """A log line, ``<ISO time> [attempt N] <text>``, as ``{"at", "attempt", "text"}`` (a
    line of another shape: its text only, ``at`` and ``attempt`` null)."""
    found = _LOG_LINE.fullmatch(line)
    if found is None:
        return {"at": None, "attempt": None, "text": line}
    return {"at": found["at"], "attempt": int(found["attempt"]), "text": found["text"]}


def history(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job or element id.")],
    json_: JsonOption = False,
) -> None:
    """A job's changes of state, oldest first, and its attempts."""
    with connect() as client:
        changes = client.job_events(job_id)
        tries = client.attempts(job_id)
    if json_:
        print_json({"events": plain(changes), "attempts": plain(tries)})
        return
    rows = [
        (when(c.at), c.state, c.reason or "", str(c.attempt or ""), c.worker or "") for c in changes
    ]
    show(table(("AT", "STATE", "REASON", "TRY", "WORKER"), rows, cut={"REASON", "WORKER"}))
    for a in tries:
        seconds = f"cpu {a.cpu_seconds or 0:.2f}s, gpu {a.gpu_seconds or 0:.2f}s"
        show(
            fields(
                [
                    (f"attempt {a.attempt}", a.outcome or "running"),
                    ("worker", f"{a.worker or '-'} ({a.device or '-'})"),
                    ("ran", f"{when(a.started_at)} - {when(a.finished_at)}, {seconds}"),
                    *([("error", a.error)] if a.error else []),
                ]
            )
        )
