"""Every console script the package declares names an object that imports: an installed
command that dies with ``ModuleNotFoundError`` is worse than no command."""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def declared_scripts(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    scripts: dict[str, str] = project.get("scripts", {})
    return scripts


def installed_scripts(distribution: str = "stratus") -> dict[str, str]:
    """What ``pip install`` made of the declaration (an editable install's metadata)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}


def sdk_declared_scripts() -> dict[str, str]:
    """The Python SDK's (clients/python): ``stratus``, the command line."""
    scripts = declared_scripts(ROOT / "clients" / "python" / "pyproject.toml")
    assert "stratus" in scripts
    return scripts


def sdk_installed_scripts() -> dict[str, str]:
    return installed_scripts("stratus-client")


def resolve(target: str) -> object:
    module_name, _, attr_path = target.partition(":")
    found: object = importlib.import_module(module_name.strip())
    for attr in filter(None, attr_path.strip().split(".")):
        found = getattr(found, attr)
    return found


@pytest.mark.parametrize(
    "scripts", [declared_scripts, installed_scripts, sdk_declared_scripts, sdk_installed_scripts]
)
def test_every_console_script_imports(scripts: Callable[[], dict[str, str]]) -> None:
    for name, target in scripts().items():
        try:
            entry = resolve(target)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"console script {name!r} -> {target!r} does not import: {exc}")
        assert callable(entry), (name, target)


def test_the_check_catches_a_dangling_script() -> None:
    with pytest.raises(ModuleNotFoundError):
        resolve("services.no_such_module:app")
