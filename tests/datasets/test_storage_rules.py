"""Small rules, one test each: names, the migration state machine, the circuit breaker and
retries, the worker's path seam, and registering a job's output file as a dataset."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import xxhash
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.errors import Invalid
from shared.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    RetriesExhausted,
    RetryPolicy,
    retry,
)
from shared.settings import StorageSettings
from shared.storage import Storage, local_dataset_path, validate_name
from shared.storage.catalog import publish_local_file
from shared.storage.migrations import ALLOWED, FINAL, MigrationState, allowed
from shared.storage.tiers import TEMP_DIR, is_transient
from tests.datamover.harness import new_tenant

GOOD = ["a", "exp/plate.npy", "A-b_c.d/e", "x" * 255, ".hidden", "a/.b/c"]
BAD = [
    "",
    "/abs",
    "a//b",
    "a/",
    "../x",
    "a/../b",
    "a/./b",
    ".",
    "..",
    "a b",
    "a\\b",
    "é",
    "x" * 256,
    "a\x00b",
    "%2e%2e",
]


@pytest.mark.parametrize("name", GOOD)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_invalid_names(name: str) -> None:
    with pytest.raises(Invalid):
        validate_name(name)


def test_local_path_stays_under_the_tenant_prefix(tmp_path: Path) -> None:
    settings = StorageSettings.model_validate({"local": {"root": str(tmp_path)}})
    tenant = uuid.uuid4()
    path = local_dataset_path(settings, tenant, "exp/a.npy")
    assert path == tmp_path.resolve() / str(tenant) / "exp" / "a.npy"
    with pytest.raises(Invalid):
        local_dataset_path(settings, tenant, "../../etc/passwd")
    with pytest.raises(ValueError, match="not a directory tier"):
        local_dataset_path(settings, tenant, "a", tier="s3")


def test_migration_states() -> None:
    assert {MigrationState.SUCCEEDED, MigrationState.FAILED} == FINAL
    for final in FINAL:
        assert not ALLOWED[final]
    assert allowed(MigrationState.PENDING, MigrationState.RUNNING)
    assert allowed(MigrationState.RUNNING, MigrationState.SUCCEEDED)
    assert allowed(MigrationState.PENDING, MigrationState.FAILED)
    assert not allowed(MigrationState.PENDING, MigrationState.SUCCEEDED)  # never without a copy
    assert not allowed(MigrationState.FAILED, MigrationState.RUNNING)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """A fresh read of the breaker's state, which its calls change (a bare ``breaker.state``
    would stay narrowed by mypy after an earlier ``is`` check)."""
    return breaker.state


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker("t", failure_threshold=2, reset_timeout_s=5, clock=lambda: now[0])
    breaker.before_call()
    breaker.on_failure(ConnectionError())
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure(ConnectionError())
    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(5)
    now[0] = 5.1
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.before_call()  # one trial
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # no second one at the same time
    breaker.on_failure(ConnectionError())
    assert state_of(breaker) is BreakerState.OPEN  # the trial failed
    now[0] = 10.2
    breaker.before_call()
    breaker.on_success()
    assert state_of(breaker) is BreakerState.CLOSED


def test_breaker_ignores_answers_that_are_not_outages() -> None:
    breaker = CircuitBreaker("t", failure_threshold=1, is_failure=is_transient)
    breaker.on_failure(FileNotFoundError("no such key"))
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure(ConnectionRefusedError())
    assert state_of(breaker) is BreakerState.OPEN


async def test_retry_gives_up_after_the_budget_and_not_on_permanent_errors() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("refused")

    policy = RetryPolicy(initial_s=0.001, max_interval_s=0.002, max_attempts=3)
    with pytest.raises(RetriesExhausted, match="failed 3 times"):
        await retry(down, policy=policy, is_transient=is_transient)
    assert calls == 3

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise FileNotFoundError("gone")

    calls = 0
    with pytest.raises(FileNotFoundError):
        await retry(missing, policy=policy, is_transient=is_transient)
    assert calls == 1

    flaky = iter([ConnectionResetError(), None])

    async def once_flaky() -> str:
        error = next(flaky)
        if error is not None:
            raise error
        return "ok"

    assert (
        await asyncio.wait_for(retry(once_flaky, policy=policy, is_transient=is_transient), 1)
        == "ok"
    )


async def test_a_job_output_file_becomes_a_dataset(
    api: httpx.AsyncClient,
    storage: StorageSettings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    t = await new_tenant(api)
    tenant_id = uuid.UUID(t.id)
    temp = Path(storage.local.root) / TEMP_DIR / f"out-{uuid.uuid4().hex}"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"result bytes")
    tiers = Storage(storage)
    async with sessions() as session, session.begin():
        published = await publish_local_file(
            session=session, storage=tiers, tenant_id=tenant_id, name="out/r.npy", path=temp
        )
    assert published.created
    assert not temp.exists()
    assert local_dataset_path(storage, tenant_id, "out/r.npy").read_bytes() == b"result bytes"
    got = await api.get("/v1/datasets/out/r.npy", headers=t.headers)
    assert got.content == b"result bytes"
    assert got.headers["etag"] == '"xxh3-128:' + xxhash.xxh3_128(b"result bytes").hexdigest() + '"'


async def test_each_tier_breaker_shows_in_metrics(storage: StorageSettings) -> None:
    from prometheus_client import generate_latest

    from shared.errors import DependencyUnavailable
    from shared.telemetry import REGISTRY

    tiers = Storage(storage, failure_threshold=2, reset_timeout_s=60)

    async def outage() -> None:
        raise ConnectionRefusedError("tier unreachable")

    for _ in range(2):
        with pytest.raises(DependencyUnavailable):
            await tiers.guard("archive", outage)
    metrics = generate_latest(REGISTRY).decode()
    assert 'stratus_circuit_state{circuit="storage.archive"} 2.0' in metrics
    assert 'stratus_circuit_state{circuit="storage.local"} 0.0' in metrics
    await tiers.close()
