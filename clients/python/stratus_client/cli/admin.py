"""``stratus admin``: tenants, their keys, worker pools and dead letters (the platform admin
key as STRATUS_API_KEY, or logged in with it)."""

from __future__ import annotations

from typing import Annotated

import typer

from stratus_client import Tenant
from stratus_client.cli.config import connect
from stratus_client.cli.options import pairs
from stratus_client.cli.output import (
    JsonOption,
    compact,
    fields,
    print_json,
    show,
    table,
    when,
)

app = typer.Typer(
    help="The platform admin's commands.", no_args_is_help=True, rich_markup_mode="markdown"
)
tenants = typer.Typer(
    help="Tenants: list, create, show, change.", no_args_is_help=True, rich_markup_mode="markdown"
)
keys = typer.Typer(
    help="A tenant's API keys: list, create, revoke.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(tenants, name="tenants")
app.add_typer(keys, name="keys")

TenantId = Annotated[str, typer.Argument(metavar="TENANT_ID")]
WeightOption = Annotated[int | None, typer.Option(help="Its share of the workers (1-1000).")]
QuotaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--quota",
        "-q",
        metavar="NAME=VALUE",
        help="A quota, e.g. max_running_jobs=10; NAME=null goes back to the platform default.",
    ),
]


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="admin")


def _tenant(t: Tenant, json_: bool) -> None:
    if json_:
        print_json(t)
        return
    rows = [
        ("id", t.id),
        ("name", t.name),
        ("weight", t.weight),
        ("quotas", compact(t.quotas) if t.quotas else "platform defaults"),
        ("suspended", "yes" if t.suspended else "no"),
        ("created", when(t.created_at)),
        ("updated", when(t.updated_at)),
    ]
    show(fields(rows))


@tenants.command("ls")
def list_tenants(json_: JsonOption = False) -> None:
    """Every tenant."""
    with connect(page_size=500) as client:
        found = list(client.admin.tenants())
    if json_:
        print_json(found)
        return
    rows = [(t.id, t.name, str(t.weight), "yes" if t.suspended else "") for t in found]
    show(table(("ID", "NAME", "WEIGHT", "SUSPENDED"), rows, cut={"NAME"}))


@tenants.command("create")
def create_tenant(
    name: Annotated[str, typer.Argument()],
    weight: WeightOption = None,
    quota: QuotaOption = None,
    json_: JsonOption = False,
) -> None:
    """A new tenant."""
    quotas = pairs(quota, "--quota", as_json=True) or None
    with connect() as client:
        _tenant(client.admin.create_tenant(name, weight=weight, quotas=quotas), json_)


@tenants.command("show")
def show_tenant(tenant_id: TenantId, json_: JsonOption = False) -> None:
    """One tenant."""
    with connect() as client:
        _tenant(client.admin.get_tenant(tenant_id), json_)


@tenants.command("update")
def update_tenant(
    tenant_id: TenantId,
    weight: WeightOption = None,
    quota: QuotaOption = None,
    suspend: Annotated[
        bool | None,
        typer.Option("--suspend/--resume", help="Refuse (or again accept) its requests."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Change a tenant's weight, quotas (those named; the others stay) or suspension."""
    quotas = pairs(quota, "--quota", as_json=True) or None
    with connect() as client:
        changed = client.admin.update_tenant(
            tenant_id, weight=weight, quotas=quotas, suspended=suspend
        )
    _tenant(changed, json_)


@keys.command("ls")
def list_keys(tenant_id: TenantId, json_: JsonOption = False) -> None:
    """A tenant's API keys, revoked ones too, newest first (never their secrets)."""
    with connect(page_size=500) as client:
        found = list(client.admin.keys(tenant_id))
    if json_:
        print_json(found)
        return
    rows = [
        (
            k.id,
            k.name,
            f"{k.prefix}...",
            ", ".join(k.scopes),
            k.state,
            when(k.created_at, short=True),
            when(k.revoked_at, short=True),
        )
        for k in found
    ]
    headers = ("ID", "NAME", "PREFIX", "SCOPES", "STATE", "CREATED", "REVOKED")
    show(table(headers, rows, cut={"NAME", "SCOPES"}))


@keys.command("create")
def create_key(
    tenant_id: TenantId,
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. ci.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="jobs:read, jobs:write, data:read or data:write (default: all)."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """A new API key of a tenant.

    Its secret is shown only now."""
    with connect() as client:
        key = client.admin.create_key(tenant_id, name, scopes=scope)
    if json_:
        print_json(key)
        return
    show(fields([("id", key.id), ("scopes", ", ".join(key.scopes)), ("key", key.key)]))
    typer.echo("The key is shown only now: keep it somewhere safe.", err=True)


@keys.command("revoke")
def revoke_key(
    tenant_id: TenantId,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID")],
    json_: JsonOption = False,
) -> None:
    """Revoke a key: it stops working within a second.

    With --json nothing is printed: the API's answer has no body."""
    with connect() as client:
        client.admin.delete_key(tenant_id, key_id)
    if not json_:
        typer.echo(f"revoked {key_id}")


@app.command()
def pools(json_: JsonOption = False) -> None:
    """The worker pools: live workers, and the autoscaler's view when it runs them."""
    with connect() as client:
        found = client.admin.pools()
    if json_:
        print_json(found)
        return
    rows = []
    for p in found:
        bounds = f"{p.min_workers}-{p.max_workers}" if p.autoscaling else "fixed"
        desired = "-" if p.desired_workers is None else str(p.desired_workers)
        queued = "-" if p.queued_jobs is None else str(p.queued_jobs)
        running = sum(int(w.get("running_jobs", 0)) for w in p.workers)
        rows.append((p.pool, str(p.live_workers), desired, bounds, queued, str(running)))
    headers = ("POOL", "LIVE", "DESIRED", "MIN-MAX", "QUEUED", "RUNNING")
    show(table(headers, rows, cut=()))


@app.command("dead-letters")
def dead_letters(
    peek: Annotated[int, typer.Option(min=0, max=100, help="Show this many of each.")] = 3,
    json_: JsonOption = False,
) -> None:
    """Per queue, the messages its consumers gave up on, and the oldest few."""
    with connect() as client:
        found = client.admin.dead_letters(peek=peek)
    if json_:
        print_json(found)
        return
    rows = [
        (q.queue, str(q.messages), "; ".join(str(m.get("body", "")) for m in q.oldest))
        for q in found
    ]
    show(table(("QUEUE", "DEAD", "OLDEST"), rows, cut={"OLDEST"}))
