"""Every whole-database advisory lock has a key of its own (shared.db.advisory): the
scheduler's vacuum once shared the leader's key, so the leader, which holds that lock on a
connection of its own, could never take it and never vacuumed."""

from __future__ import annotations

from services.scheduler import autoscaler, leader, preempt
from shared.db import advisory, maintenance


def test_the_keys_are_distinct_bigints() -> None:
    keys = list(advisory.ALL.values())
    assert len(set(keys)) == len(keys)
    assert all(-(2**63) <= k < 2**63 for k in keys)


def test_each_use_takes_its_own_key() -> None:
    used = {
        leader.LEADER_LOCK,
        maintenance.LOCK_KEY,
        autoscaler.ADVISORY_LOCK,
        preempt.ADVISORY_LOCK,
    }
    assert used == set(advisory.ALL.values())
