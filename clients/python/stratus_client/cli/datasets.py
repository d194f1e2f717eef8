"""``stratus datasets put|get|ls|rm`` (with bars of bytes and rate) and ``stratus migrate``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from stratus_client import Dataset
from stratus_client.cli.config import connect
from stratus_client.cli.output import (
    FAILED,
    JsonOption,
    fields,
    print_json,
    show,
    size,
    table,
    when,
)
from stratus_client.cli.progress import follow_migration, transfer

app = typer.Typer(
    help="Your datasets: upload, download, list, delete.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="datasets")
    parent.command()(migrate)


def _stored(dataset: Dataset) -> None:
    rows = [
        ("name", dataset.name),
        ("size", f"{size(dataset.size)} ({dataset.size} bytes)"),
        ("tier", dataset.tier),
        ("tiers", ", ".join(dataset.tiers) or dataset.tier),
        ("checksum", dataset.checksum),
        ("updated", when(dataset.updated_at)),
        ("produced by", dataset.produced_by),
    ]
    show(fields(rows))


@app.command()
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Argument(help="The dataset's name, e.g. experiments/x.npy.")],
    tier: Annotated[str | None, typer.Option(help="The tier to store it on.")] = None,
    json_: JsonOption = False,
) -> None:
    """Upload FILE as dataset NAME (replacing it if it exists)."""
    total = file.stat().st_size
    with connect() as client, transfer(name, total) as moved:
        dataset = client.datasets.put_file(name, file, tier=tier, progress=moved)
    if json_:
        print_json(dataset)
    else:
        _stored(dataset)


@app.command()
def get(
    name: Annotated[str, typer.Argument(help="The dataset's name.")],
    file: Annotated[
        Path | None,
        typer.Argument(dir_okay=False, help="Where to write it (default: NAME's last part)."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Download dataset NAME into FILE (written whole, or not at all)."""
    target = file or Path(PurePosixPath(name).name)
    with connect() as client:
        meta = client.datasets.meta(name)
        with transfer(name, meta.size) as moved:
            client.datasets.get_file(name, target, progress=moved)
    if json_:
        print_json(meta)
    else:
        typer.echo(f"{name} -> {target} ({size(meta.size)})")


@app.command("ls")
def list_datasets(
    prefix: Annotated[str | None, typer.Option(help="Only names that start with it.")] = None,
    json_: JsonOption = False,
) -> None:
    """Your datasets."""
    with connect(page_size=500) as client:
        found = list(client.datasets.list(prefix=prefix))
    if json_:
        print_json(found)
        return
    rows = [
        (d.name, size(d.size), ",".join(d.tiers) or d.tier, when(d.updated_at, short=True))
        for d in found
    ]
    show(table(("NAME", "SIZE", "TIERS", "UPDATED"), rows, cut={"TIERS"}))


@app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="The dataset's name.")],
    json_: JsonOption = False,
) -> None:
    """Delete dataset NAME (from every tier).

    With --json nothing is printed: the API's answer has no body."""
    with connect() as client:
        client.datasets.delete(name)
    if not json_:
        typer.echo(f"deleted {name}")


def migrate(
    dataset: Annotated[str, typer.Argument(help="The dataset's name.")],
    tier: Annotated[str, typer.Argument(help="The tier to copy it to.")],
    move: Annotated[bool, typer.Option("--move", help="Delete it from its tier after.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Show its bytes until it ends.")] = False,
    json_: JsonOption = False,
) -> None:
    """Copy (or move) a dataset to another storage tier.

    The copy is verified before it is published. With --wait, show its bytes, then exit 0
    once it SUCCEEDED, 1 when it FAILED."""
    with connect() as client:
        migration = client.migrate(dataset, tier, "move" if move else "copy")
        if wait:
            migration = follow_migration(client, migration)
    if json_:
        print_json(migration)
    else:
        what = f"{migration.mode} {dataset} {migration.from_tier} -> {migration.to_tier}"
        error = f" ({migration.error})" if migration.error else ""
        typer.echo(f"{migration.state} {migration.id}: {what}{error}")
    if wait and migration.state != "SUCCEEDED":
        raise typer.Exit(FAILED)
