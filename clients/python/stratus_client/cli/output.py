"""What the CLI prints: the API's JSON for scripts (``--json``), tables and key/value views
for people (within 80 columns: long cells end in an ellipsis), errors as one line on stderr,
and the exit codes."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table

from stratus_client import ApiError

OK = 0
FAILED = 1  # a job, array or migration ended otherwise than SUCCEEDED
USAGE = 2  # typer's own code for bad options and arguments
API_ERROR = 3  # the service refused, failed, or could not be reached

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON (one document) instead.")
]


def stdout() -> Console:
    # Made for each use: the console then writes to the sys.stdout of the moment.
    return Console(highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def plain(value: Any) -> Any:
    """A model as the API sent it (the fields it set), recursively through lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(plain(value), indent=2))


def compact(value: Any) -> str:
    """A JSON value on one line (params, results)."""
    return json.dumps(value, separators=(", ", ": "))


def when(at: datetime | None, *, short: bool = False) -> str:
    """A time in UTC: ``2026-12-06 13:55:02Z``, or ``12-06 13:55`` in tables."""
    if at is None:
        return "-"
    at = at.astimezone(UTC)
    return at.strftime("%m-%d %H:%M") if short else at.strftime("%Y-%m-%d %H:%M:%SZ")


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    cut: Collection[str],
    width: int | None = None,
) -> Table:
    """A borderless table, one line a row, within ``width`` (the terminal's): the columns
    not in ``cut`` (ids, states, times) keep their whole width, and the ``cut`` ones
    (descriptions, results) share the rest, ending in an ellipsis where it is too short."""
    rows = [list(row) for row in rows]
    natural = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    room = (width or stdout().width) - GAP * (len(headers) - 1)
    room -= sum(n for h, n in zip(headers, natural, strict=True) if h not in cut)
    limits = _share(
        room, {i: n for i, (h, n) in enumerate(zip(headers, natural, strict=True)) if h in cut}
    )
    t = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, GAP - 1, 0, 0),
        show_edge=False,
        pad_edge=False,
        header_style="bold",
    )
    for i, name in enumerate(headers):
        if i in limits:
            t.add_column(name, no_wrap=True, overflow="ellipsis", max_width=limits[i])
        else:
            t.add_column(name, no_wrap=True, min_width=natural[i])
    for row in rows:
        t.add_row(*row)
    return t


GAP = 2  # between two columns


def _share(room: int, wanted: dict[int, int]) -> dict[int, int]:
    """``room`` shared out between columns that want ``wanted`` widths: the narrowest get
    all they want first, the others an equal part of what is left (at least 3)."""
    limits = {}
    for left, (i, n) in enumerate(sorted(wanted.items(), key=lambda item: item[1])):
        part = max(3, room // (len(wanted) - left))
        limits[i] = min(n, part)
        room -= limits[i]
    return limits


def fields(rows: Iterable[tuple[str, Any]]) -> Table:
    """A key/value view (``show``); values wrap rather than lose their end."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, "-" if value is None else str(value))
    return grid


def show(renderable: Any) -> None:
    stdout().print(renderable)


def counts_line(counts: Mapping[str, int]) -> str:
    """``SUCCEEDED 18, FAILED 2``: the states that have elements."""
    return ", ".join(f"{state} {n}" for state, n in counts.items() if n) or "-"


def problem_line(error: ApiError) -> str:
    """The problem as one line: status, title, detail and the fields that failed."""
    text = f"{error.status} {error.title}".strip()
    if error.detail:
        text += f": {error.detail}"
    failed = [
        f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in error.errors
    ]
    if failed and not any(f in error.detail for f in failed):
        text += f" ({'; '.join(failed[:3])}{'; ...' if len(failed) > 3 else ''})"
    return " ".join(text.split())


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` on stderr and end the command with ``code``."""
    typer.echo(f"stratus: {message}", err=True)
    raise typer.Exit(code)
