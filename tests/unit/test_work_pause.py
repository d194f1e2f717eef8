"""When a full worker pauses its work queue (``WorkerRuntime._pause_when_full``): while its
jobs are long or not known yet, never while they are short (pure logic, no servers)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.worker.app import PAUSE_MIN_RUN_S, WorkerRuntime


def _worker() -> Any:
    return SimpleNamespace(recent_run_s=None)


def _ran(worker: Any, *seconds: float) -> None:
    for s in seconds:
        WorkerRuntime._ran(worker, s)


def _pauses(worker: Any) -> bool:
    return WorkerRuntime._pause_when_full(worker)


def test_a_new_worker_pauses_when_full() -> None:
    assert _pauses(_worker())


def test_short_jobs_never_pause_it() -> None:
    worker = _worker()
    _ran(worker, 0.002, 0.004, 0.001)
    assert worker.recent_run_s < PAUSE_MIN_RUN_S
    assert not _pauses(worker)


def test_long_jobs_do() -> None:
    worker = _worker()
    _ran(worker, 0.002, 40.0)
    assert _pauses(worker)


def test_the_average_follows_a_change_of_jobs_both_ways() -> None:
    worker = _worker()
    _ran(worker, 30.0)
    assert _pauses(worker)
    _ran(worker, *[0.01] * 5)  # a few short jobs after a long one: still long on average
    assert _pauses(worker)
    _ran(worker, *[0.01] * 20)  # a run of them: short
    assert not _pauses(worker)
    _ran(worker, 5.0, 5.0)  # long ones again
    assert _pauses(worker)
