"""The ``stratus`` command (clients/python/stratus_client/cli) through typer's runner against a
live cluster: one cluster for the whole folder, every test on a tenant of its own (made with
the SDK's admin methods), no configuration file but the test's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stratus_client import Client
from stratus_client.cli.app import app
from typer.testing import CliRunner, Result

from tests.clients import new_tenant_key, tiered_cluster
from tests.conftest import ADMIN_KEY
from tools.cluster import LocalCluster

MC = ("--param", "samples=1000")  # montecarlo_pi: done in milliseconds


@pytest.fixture(scope="package")
def cli_cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """Every service, with the ``local`` and ``archive`` tiers."""
    with tiered_cluster("cli", test_env, tmp_path_factory, concurrency=4) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def url(cli_cluster: LocalCluster) -> str:
    return cli_cluster.url("gateway")


@pytest.fixture(scope="package")
def admin(url: str) -> Iterator[Client]:
    with Client(url, ADMIN_KEY) as c:
        yield c


def new_key(admin: Client, name: str, **quotas: Any) -> str:
    """A new tenant with ``quotas``: a key of it with every scope."""
    return new_tenant_key(admin, name, "cli-test", **quotas)


@dataclass
class Stratus:
    """``stratus ARGS`` in this process, configured by the environment only."""

    url: str
    key: str
    home: Path
    env: dict[str, str | None] = field(default_factory=dict)

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        base: dict[str, str | None] = {
            "STRATUS_URL": self.url,
            "STRATUS_API_KEY": self.key,
            "XDG_CONFIG_HOME": str(self.home),
            "COLUMNS": "80",
        }
        return CliRunner().invoke(app, list(args), input=input, env={**base, **self.env, **env})

    def ok(self, *args: str, **env: str | None) -> Result:
        result = self(*args, **env)
        assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str, **env: str | None) -> Any:
        return json.loads(self.ok(*args, "--json", **env).stdout)

    def as_key(self, key: str) -> Stratus:
        return Stratus(self.url, key, self.home, self.env)


@pytest.fixture
def key(admin: Client, request: pytest.FixtureRequest) -> str:
    return new_key(admin, request.node.name.replace("[", "-").strip("]")[:80])


@pytest.fixture
def stratus(url: str, key: str, tmp_path: Path) -> Stratus:
    return Stratus(url, key, tmp_path / "config")


def one_line(text: str) -> str:
    """``text`` as exactly one line (an error's message)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]
