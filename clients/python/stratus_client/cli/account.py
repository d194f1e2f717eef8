"""``stratus login`` (the service and key, checked, into a file only you can read) and
``stratus usage``, ``stratus webhook-secret``."""

from __future__ import annotations

from itertools import islice
from typing import Annotated

import typer

from stratus_client import ApiError, Client, TenantSelf
from stratus_client.cli.config import connect, settings, write_file
from stratus_client.cli.output import JsonOption, counts_line, fields, print_json, show, size


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(usage)
    app.command("webhook-secret")(webhook_secret)


def _who(client: Client) -> TenantSelf | None:
    """The key's tenant, or None for the platform admin's key, asked of the service (so a
    wrong URL or key fails here)."""
    try:
        return client.tenant()
    except ApiError as error:
        if error.status != 403:  # 403: a key of no tenant, the admin's
            raise
    list(islice(client.admin.tenants(), 1))
    return None


def login(
    url: Annotated[str | None, typer.Option(help="The gateway, e.g. http://host:8000.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Your API key (asked when left out).")] = None,
    json_: Annotated[
        bool,
        typer.Option("--json", help="Print the key's tenant as the API shows it (admin: null)."),
    ] = False,
) -> None:
    """Check a service URL and API key, and keep them for the next commands.

    They go to $XDG_CONFIG_HOME/stratus/config.toml (~/.config by default), readable by you
    only; STRATUS_URL and STRATUS_API_KEY still win over it."""
    current = settings()
    url = url or typer.prompt("Service URL", default=current.url or "http://localhost:8000")
    api_key = api_key or typer.prompt("API key", hide_input=True)
    with connect(url, api_key, retry_s=0) as client:  # a wrong URL fails at once
        tenant = _who(client)
    path = write_file(url, api_key)
    if json_:
        print_json(tenant)
    else:
        who = "the platform admin" if tenant is None else f"tenant {tenant.name}"
        typer.echo(f"logged in to {url} as {who} (saved in {path})")


def usage(json_: JsonOption = False) -> None:
    """Your tenant's use: CPU and GPU seconds, jobs by state, storage, bytes moved."""
    with connect() as client:
        used = client.usage()
    if json_:
        print_json(used)
        return
    rows = [
        ("cpu seconds", f"{used.cpu_seconds:.1f}"),
        ("gpu seconds", f"{used.gpu_seconds:.1f}"),
        ("jobs", counts_line(used.jobs)),
        ("storage", size(used.storage_bytes)),
        ("bytes moved", size(used.bytes_moved)),
    ]
    show(fields(rows))


def webhook_secret(json_: JsonOption = False) -> None:
    """A new secret that signs your webhooks (`--notify`) from now on; the old one stops.

    Printed once only: keep it where your receiver checks `Stratus-Signature`."""
    with connect() as client:
        made = client.rotate_webhook_secret()
    if json_:
        print_json(made)
    else:
        typer.echo(made.secret)
