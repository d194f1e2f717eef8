"""The Alembic migrations build exactly the schema the ORM models describe, and go down and
up again cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import copy_database
from tools.cluster import drop_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_db(test_env: dict[str, str]) -> Iterator[str]:
    """A copy of the run's template: what ``alembic upgrade head`` built, in this run."""
    name = test_env["STRATUS_POSTGRES__DATABASE"] + "_mig"
    copy_database(name, test_env["STRATUS_POSTGRES__DATABASE"])
    try:
        yield name
    finally:
        drop_database(name)


def _alembic(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRATUS_POSTGRES__DATABASE": db}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_models_and_migrations_agree(fresh_db: str) -> None:
    check = _alembic(fresh_db, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_downgrade_to_base_and_upgrade_again(fresh_db: str) -> None:
    down = _alembic(fresh_db, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    up = _alembic(fresh_db, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    heads = _alembic(fresh_db, "heads")
    assert len(heads.stdout.strip().splitlines()) == 1  # one linear history
