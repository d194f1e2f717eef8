"""``stratus login`` (a checked key in a file only its owner reads; the environment wins over
it), no configuration at all, and ``stratus usage``."""

from __future__ import annotations

import stat

from stratus_client import Client

from tests.cli.conftest import MC, Stratus, one_line
from tests.conftest import ADMIN_KEY

NO_ENV = {"STRATUS_URL": None, "STRATUS_API_KEY": None}


def test_login_writes_a_file_only_its_owner_reads(stratus: Stratus, url: str, key: str) -> None:
    path = stratus.home / "stratus" / "config.toml"
    result = stratus.ok("login", "--url", url, "--api-key", key, **NO_ENV)
    assert "as tenant test_login" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key in path.read_text()
    # the file alone configures the next commands
    assert sum(stratus.json("usage", **NO_ENV)["jobs"].values()) == 0
    # the environment wins over it
    other = stratus("usage", STRATUS_URL=None, STRATUS_API_KEY="sk_" + "y" * 40)
    assert other.exit_code == 3
    assert one_line(other.stderr).startswith("stratus: 401 ")


def test_login_asks_and_checks(stratus: Stratus, url: str, key: str) -> None:
    path = stratus.home / "stratus" / "config.toml"
    wrong = stratus("login", input=f"{url}\nsk_{'z' * 40}\n", **NO_ENV)
    assert wrong.exit_code == 3
    assert "401" in one_line(wrong.stderr)
    assert not path.exists()  # nothing kept of a key that does not work
    asked = stratus("login", input=f"{url}\n{key}\n", **NO_ENV)
    assert asked.exit_code == 0, asked.stderr
    assert key not in asked.stdout  # the key is not echoed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tenant = stratus.json("login", "--url", url, "--api-key", key, **NO_ENV)
    assert tenant["name"].startswith("test_login_asks")
    assert "max_queued_jobs" in tenant["usage"]
    admin = stratus.ok("login", "--url", url, "--api-key", ADMIN_KEY, **NO_ENV)
    assert "as the platform admin" in admin.stdout
    assert ADMIN_KEY in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_configuration_is_a_usage_error(stratus: Stratus) -> None:
    result = stratus("jobs", **NO_ENV)
    assert result.exit_code == 2
    assert "stratus login" in one_line(result.stderr)
    no_key = stratus("jobs", STRATUS_API_KEY=None)
    assert no_key.exit_code == 2
    assert "API key" in one_line(no_key.stderr)


def test_usage(stratus: Stratus, url: str, key: str) -> None:
    stratus.ok("submit", "montecarlo_pi", *MC, "--wait")
    used = stratus.json("usage")
    assert used["jobs"]["SUCCEEDED"] == sum(used["jobs"].values()) == 1
    with Client(url, key) as client:
        assert used == client.usage().model_dump(mode="json")
    human = stratus.ok("usage").stdout
    assert "SUCCEEDED 1" in human
    assert "cpu seconds" in human
