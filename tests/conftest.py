"""Test harness: every test session gets its own PostgreSQL database and RabbitMQ vhost on
the real servers (never the ones ``make up`` uses), dropped at the end.

Two guard rails keep a broken run short and its failures readable: the servers are checked
once per module, before its first test that needs them, and again after a test that ran
into its timeout; a server that does not answer within ``STRATUS_TEST_SERVER_CHECK_S`` is
brought back by ``scripts/ensure-servers.sh`` (a hung RabbitMQ node killed and started again;
at most twice a session, each time reported among the run's warnings with the machine's memory,
disk and load), and a module whose servers still do not answer fails at once, each test saying
which server is out (instead of every test running into its timeout); and after
``STRATUS_TEST_DEADLINE_S`` of the session every test left fails at once with "session
deadline exceeded", so that a run that has gone wrong still ends, with its report, well
inside CI's limit."""

from __future__ import annotations

import os
import secrets
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Generator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db.engine import make_engine, make_sessionmaker
from shared.settings import CommonSettings
from tests.databases import (
    copy_database,
    delete_vhost,
    migrate_template,
    new_vhost,
    template_of,
)
from tests.servers import bring_back, servers_out
from tools.cluster import drop_database

RUN_ID = uuid.uuid4().hex[:8]
ADMIN_KEY = "test-admin-" + secrets.token_urlsafe(16)
DEADLINE_S = float(os.environ.get("STRATUS_TEST_DEADLINE_S", str(40 * 60)))
SERVER_CHECK_S = float(os.environ.get("STRATUS_TEST_SERVER_CHECK_S", "5"))
RECOVERIES = 2  # times a session the harness brings back a server that stopped answering
_recoveries = 0

_started = time.monotonic()
_modules_out: dict[str, str] = {}  # module → the servers that did not answer ("" when all did)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _started
    _started = time.monotonic()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    elapsed = time.monotonic() - _started
    if elapsed > DEADLINE_S:
        pytest.fail(
            f"session deadline exceeded: {elapsed:.0f}s into the run, past "
            f"STRATUS_TEST_DEADLINE_S={DEADLINE_S:.0f}; the tests left are not run",
            pytrace=False,
        )
    if "test_env" not in getattr(item, "fixturenames", ()):
        return  # needs no server
    module = item.nodeid.split("::")[0]
    if module not in _modules_out:
        _modules_out[module] = "; ".join(_servers_out_or_brought_back(module))
    if _modules_out[module]:
        pytest.fail(
            f"servers not answering within {SERVER_CHECK_S:.0f}s, checked for {module}: "
            f"{_modules_out[module]}",
            pytrace=False,
        )


def _servers_out_or_brought_back(module: str) -> list[str]:
    """The servers that do not answer; when one does not, ``scripts/ensure-servers.sh``
    is asked (at most ``RECOVERIES`` times a session) to bring it back, a hung node restarted,
    and the servers are checked again. What happened goes into the run's warnings."""
    global _recoveries
    out = servers_out(CommonSettings(), SERVER_CHECK_S)
    if not out or _recoveries >= RECOVERIES:
        return out
    _recoveries += 1
    said = bring_back(out)
    out = servers_out(CommonSettings(), SERVER_CHECK_S)
    warnings.warn(
        f"before {module}: {'still out: ' + '; '.join(out) if out else 'brought back'}\n{said}",
        ServersBroughtBack,
        stacklevel=1,
    )
    return out


class ServersBroughtBack(UserWarning):
    """A shared server stopped answering during the run and the harness tried to bring it
    back."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that ran into its timeout has the servers checked again: when one stopped
    answering, the rest of its module fails at once instead of timing out test by test."""
    report: pytest.TestReport = yield
    if report.failed and call.excinfo is not None and "Timeout" in str(call.excinfo.value):
        module = item.nodeid.split("::")[0]
        out = _servers_out_or_brought_back(module)
        if out:
            _modules_out[module] = "; ".join(out)
    return report


@pytest.fixture(scope="session")
def test_env() -> Iterator[dict[str, str]]:
    db = vhost = f"stratus_test_{RUN_ID}"
    migrate_template(db)
    copy_database(db, db)
    new_vhost(vhost)
    env = {
        "STRATUS_POSTGRES__DATABASE": db,
        "STRATUS_RABBIT__VHOST": vhost,
        "STRATUS_ADMIN_KEY": ADMIN_KEY,
        "STRATUS_KEY_SECRET": "test-key-secret-" + RUN_ID,
        "STRATUS_ENVIRONMENT": "test",
        "STRATUS_LOG_LEVEL": "WARNING",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        drop_database(db)
        drop_database(template_of(db))
        delete_vhost(vhost)


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session")
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings.postgres, application_name="stratus-tests")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
