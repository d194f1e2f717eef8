"""The ``stratus`` command: the typer app, its command groups, and the one place that turns
the SDK's errors into a line on stderr and an exit code (0 done, 1 a job/array/migration
that did not succeed, 2 a usage error, 3 an API error)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from typer.core import TyperGroup

from stratus_client import ApiError, ConfigurationError, __version__
from stratus_client.cli import account, admin, datasets, history, jobs, watch, workflows
from stratus_client.cli.output import API_ERROR, USAGE, fail, problem_line


class _Commands(TyperGroup):
    """Every command runs inside ``invoke``: the errors the SDK raises end here."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as error:
            fail(problem_line(error), API_ERROR)
        except ConfigurationError as error:
            fail(str(error), USAGE)
        except httpx.TransportError as error:
            url = error.request.url if _has_request(error) else "the service"
            fail(f"cannot reach {url}: {error or type(error).__name__}", API_ERROR)


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018 - raises when the error carries no request
    except RuntimeError:
        return False
    return True


app = typer.Typer(
    cls=_Commands,
    name="stratus",
    help="Stratus from the command line: kernels, jobs and arrays, workflows, events and logs, "
    "datasets, "
    "usage, admin. "
    "Configure with STRATUS_URL and STRATUS_API_KEY, or `stratus login`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stratus {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Stratus from the command line."""


jobs.register(app)
workflows.register(app)
watch.register(app)
history.register(app)
datasets.register(app)
account.register(app)
admin.register(app)


def main() -> None:
    """The console script ``stratus``."""
    app()
