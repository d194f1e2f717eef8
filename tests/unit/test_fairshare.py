"""Fair share between tenants (pure allocation rules)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.scheduler.fairshare import Candidate, TenantLoad, allocate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tenant(
    weight: int = 1, jobs: int = 100, priorities: list[int] | None = None, **kw: float
) -> TenantLoad:
    tid = uuid.uuid4()
    prios = priorities if priorities is not None else [0] * jobs
    cands = [
        Candidate(uuid.uuid4(), tid, "k", p, T0 + timedelta(seconds=i)) for i, p in enumerate(prios)
    ]
    cands.sort(key=lambda c: (-c.priority, c.created_at))
    return TenantLoad(tenant_id=tid, weight=weight, candidates=cands, **kw)  # type: ignore[arg-type]


def count(chosen: list[Candidate], t: TenantLoad) -> int:
    return sum(c.tenant_id == t.tenant_id for c in chosen)


def test_slots_follow_weights() -> None:
    a, b = tenant(weight=1), tenant(weight=3)
    plan = allocate([a, b], 40, usage_scale_s=60)
    assert (count(plan.chosen, a), count(plan.chosen, b)) == (10, 30)


def test_jobs_in_flight_count_against_the_share() -> None:
    a, b = tenant(weight=1, in_flight=8), tenant(weight=1, in_flight=0)
    plan = allocate([a, b], 8, usage_scale_s=60)
    assert count(plan.chosen, b) == 8  # b catches up before a gets more


def test_a_light_tenant_goes_first_while_others_flood() -> None:
    a, b = tenant(weight=1, in_flight=10), tenant(weight=3, in_flight=30)
    light = tenant(weight=1, jobs=1)
    plan = allocate([a, b, light], 1, usage_scale_s=60)
    assert plan.chosen[0].tenant_id == light.tenant_id


def test_recent_usage_lowers_the_share() -> None:
    heavy, fresh = tenant(usage_s=600.0), tenant(usage_s=0.0)
    plan = allocate([heavy, fresh], 10, usage_scale_s=60)  # 600 s weigh like 10 jobs
    assert count(plan.chosen, fresh) == 10


def test_priority_orders_jobs_within_a_tenant() -> None:
    t = tenant(priorities=[1, 9, 5, 9])
    plan = allocate([t], 3, usage_scale_s=60)
    assert [c.priority for c in plan.chosen] == [9, 9, 5]
    assert plan.chosen[0].created_at < plan.chosen[1].created_at


def test_max_running_holds_with_a_reason() -> None:
    full = tenant(in_flight=2, max_running=2)
    part = tenant(in_flight=1, max_running=3)
    plan = allocate([full, part], 10, usage_scale_s=60)
    assert count(plan.chosen, full) == 0
    assert count(plan.chosen, part) == 2
    assert "max_running_jobs (2)" in plan.over_quota[full.tenant_id]


def test_cpu_quota_holds_with_a_reason() -> None:
    spent = tenant(cpu_today_s=100.0, cpu_per_day_s=100.0)
    plan = allocate([spent], 10, usage_scale_s=60)
    assert plan.chosen == []
    assert "cpu_seconds_per_day" in plan.over_quota[spent.tenant_id]


def test_never_more_than_free_or_available() -> None:
    plan = allocate([tenant(jobs=3), tenant(jobs=2)], 100, usage_scale_s=60)
    assert len(plan.chosen) == 5
    assert len({c.job_id for c in plan.chosen}) == 5
    assert allocate([tenant(jobs=3)], 0, usage_scale_s=60).chosen == []


def test_headroom_is_what_the_quotas_leave_and_allocate_keeps_to_it() -> None:
    """The autoscaler caps a tenant's demand with ``headroom``: the same rule as dispatch."""
    assert tenant(in_flight=1, max_running=3).headroom == 2
    assert tenant(in_flight=5, max_running=3).headroom == 0  # quota lowered below in flight
    assert tenant(in_flight=0, max_running=3, cpu_today_s=9.0, cpu_per_day_s=9.0).headroom == 0
    for t in (tenant(in_flight=1, max_running=4), tenant(in_flight=4, max_running=4)):
        assert count(allocate([t], 100, usage_scale_s=60).chosen, t) == t.headroom


def timed(t: TenantLoad, timeout_s: float) -> TenantLoad:
    t.candidates = [
        Candidate(c.job_id, c.tenant_id, c.kernel, c.priority, c.created_at, timeout_s)
        for c in t.candidates
    ]
    return t


def test_jobs_in_flight_hold_their_timeout_of_the_cpu_budget() -> None:
    # 100 s a day, 60 s jobs: the first starts (0 < 100), the second too (60 < 100), then
    # the two in flight hold 120 s and nothing more starts
    t = timed(tenant(cpu_per_day_s=100.0), 60.0)
    assert count(allocate([t], 10, usage_scale_s=60).chosen, t) == 2
    held = timed(tenant(cpu_per_day_s=100.0, cpu_today_s=10.0, held_s=90.0), 60.0)
    plan = allocate([held], 10, usage_scale_s=60)
    assert plan.chosen == []
    assert "held by jobs in flight" in plan.over_quota[held.tenant_id]
    assert held.headroom == 0


def test_what_ended_and_what_is_held_add_up() -> None:
    t = timed(tenant(cpu_per_day_s=100.0, cpu_today_s=30.0, held_s=60.0), 5.0)
    # 90 < 100: one starts and then holds 95; 95 < 100: another; 100 is the budget: no more
    assert count(allocate([t], 10, usage_scale_s=60).chosen, t) == 2


def test_contending_tenants_share_the_slots_and_the_slack_by_weight() -> None:
    heavy, light = tenant(jobs=30, weight=3), tenant(jobs=30)
    plan = allocate([heavy, light], 20, usage_scale_s=60, slots=4, reserved=1)
    assert count(plan.chosen, heavy) == 15
    assert count(plan.chosen, light) == 5


def test_a_tenant_alone_uses_every_slot_and_the_slack() -> None:
    alone = tenant(jobs=30, on_device=3)
    assert count(allocate([alone], 20, usage_scale_s=60, slots=4).chosen, alone) == 20
    one_slot = tenant(jobs=5)
    plan = allocate([one_slot, tenant(jobs=5)], 5, usage_scale_s=60, slots=1)
    assert len(plan.chosen) == 5  # a one-slot pool cannot keep a slot back


def test_a_tenant_alone_leaves_the_reserved_slots_for_a_later_one() -> None:
    alone = tenant(jobs=30)
    plan = allocate([alone], 20, usage_scale_s=60, slots=4, reserved=1)
    assert count(plan.chosen, alone) == 3  # neither the fourth slot nor the slack
    # the tenant that comes next takes the slot kept free, ahead of the first one's jobs
    hog, late = tenant(jobs=27, in_flight=3, on_device=3), tenant(jobs=1)
    plan = allocate([hog, late], 20, usage_scale_s=60, slots=4, reserved=1)
    assert plan.chosen[0].tenant_id == late.tenant_id  # first into the worker queue
    assert count(plan.chosen, late) == 1
    # a device too small to spare a slot is used whole
    small = tenant(jobs=30)
    assert count(allocate([small], 20, usage_scale_s=60, slots=3, reserved=1).chosen, small) == 20
