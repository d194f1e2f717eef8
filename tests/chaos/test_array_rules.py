"""The chaos suite's array rules, alone (no servers): the workload's job count holds its
arrays' elements, the worker killer picks the worker that runs the most elements, and the
array checks find what they look for."""

from __future__ import annotations

import uuid

from shared.jobs.arrays import element_id
from tests.chaos import workload
from tests.chaos.array_checks import ArrayFindings, ArrayRow, check_array
from tests.chaos.targets import Holder, pick_holder

TENANTS = [workload.Tenant(str(n), f"t{n}", "") for n in range(3)]


def test_the_jobs_of_a_run_are_its_single_jobs_and_its_elements() -> None:
    for count in (200, 2000, 50):
        specs = workload.job_specs(count, TENANTS)
        arrays = [s for s in specs if s.array]
        assert sum(s.units for s in specs) == count
        assert len({s.idempotency_key for s in specs}) == len(specs)
        assert {s.tenant.id for s in arrays} == {t.id for t in TENANTS}
        assert any(s.array and s.array.get("max_concurrent") for s in specs[len(specs) // 2 :])
    sizes = [s.units for s in workload.job_specs(200, TENANTS) if s.array]
    assert len(sizes) == 4
    assert all(20 <= n <= 50 for n in sizes)
    assert not any(s.array for s in workload.job_specs(10, TENANTS))  # too small for arrays


def test_the_killer_picks_the_live_worker_with_the_most_elements() -> None:
    ready = ["worker_00", "worker_01", "worker_02"]
    pids = {"worker_00": 100, "worker_01": 101, "worker_02": 102}
    running = {"h-worker-00-100": 1, "h-worker-01-101": 2, "h-worker-02-99": 5}
    # worker_02's 5 elements are on its killed incarnation (pid 99): not a target
    assert pick_holder(ready, pids, running) == Holder("worker_01", "h-worker-01-101", 2)
    assert pick_holder(["worker_00"], pids, running) == Holder("worker_00", "h-worker-00-100", 1)
    assert pick_holder(ready, pids, {"h-worker-02-99": 5}) is None
    assert pick_holder(ready, pids, {}) is None


def _array_row(size: int, counts: dict[str, int], state: str) -> ArrayRow:
    return ArrayRow(
        id=uuid.UUID(int=7 << 64),
        state=state,
        params={"samples": 10},
        size=size,
        index_param="seed",
        max_concurrent=2,
        overrides=None,
        cancelled=False,
        counts={s: counts.get(s, 0) for s in _STATES},
    )


_STATES = ("PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def _row(array: ArrayRow, index: int, state: str = "SUCCEEDED") -> tuple[object, ...]:
    params = {"samples": 10, "seed": index}
    return (element_id(array.id, index), array.id, index, state, params)


def test_a_whole_array_consistent_with_its_counts_has_no_finding() -> None:
    a = _array_row(3, {"SUCCEEDED": 3}, "SUCCEEDED")
    f = ArrayFindings()
    check_array(f, a, [_row(a, i) for i in range(3)])
    assert f.problems() == []


def test_the_array_checks_find_a_missing_a_doubled_and_a_miscounted_element() -> None:
    a = _array_row(3, {"SUCCEEDED": 3}, "SUCCEEDED")
    f = ArrayFindings()
    check_array(f, a, [_row(a, 0), _row(a, 0), _row(a, 1, "RUNNING")])
    assert len(f.indices) == 1
    assert "missing [2]" in f.indices[0]
    assert "twice [0]" in f.indices[0]
    assert f.not_final == [f"{a.id}:1 RUNNING"]
    assert f.counts_wrong  # 3 SUCCEEDED counted; the rows hold 2, 1 RUNNING, 1 pending
    wrong_params = (element_id(a.id, 2), a.id, 2, "SUCCEEDED", {"samples": 10, "seed": 5})
    g = ArrayFindings()
    check_array(g, a, [_row(a, 0), _row(a, 1), wrong_params])
    assert len(g.elements_wrong) == 1
    assert g.elements_wrong[0].startswith(f"{a.id}:2 ran")


def test_an_array_state_its_counts_do_not_give_is_a_finding() -> None:
    a = _array_row(2, {"SUCCEEDED": 1, "RUNNING": 1}, "SUCCEEDED")  # counts give RUNNING
    f = ArrayFindings()
    check_array(f, a, [_row(a, 0), _row(a, 1, "RUNNING")])
    assert f.states_wrong == [f"{a.id}: SUCCEEDED, counts give RUNNING"]
    assert not f.counts_wrong
