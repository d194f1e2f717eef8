"""``stratus admin tenants|keys|pools|dead-letters`` with the admin key; a tenant's key is
refused (the API's 403, exit 3)."""

from __future__ import annotations

import time

from tests.cli.conftest import Stratus, one_line
from tests.conftest import ADMIN_KEY


def test_tenants_and_keys(stratus: Stratus) -> None:
    admin = stratus.as_key(ADMIN_KEY)
    name = f"cli-admin-{time.time_ns()}"
    tenant = admin.json(
        "admin", "tenants", "create", name, "--weight", "2", "-q", "max_running_jobs=3"
    )
    assert (tenant["name"], tenant["weight"], tenant["quotas"]["max_running_jobs"]) == (name, 2, 3)
    assert tenant["id"] in {t["id"] for t in admin.json("admin", "tenants", "ls")}
    assert tenant["id"] in admin.ok("admin", "tenants", "ls").stdout
    assert admin.json("admin", "tenants", "show", tenant["id"])["name"] == name
    assert name in admin.ok("admin", "tenants", "show", tenant["id"]).stdout
    changed = admin.json(
        "admin", "tenants", "update", tenant["id"], "-q", "max_queued_jobs=50", "--suspend"
    )
    assert changed["suspended"] is True
    assert changed["quotas"]["max_queued_jobs"] == 50
    assert changed["quotas"]["max_running_jobs"] == 3  # the quotas not named stay
    resumed = admin.json("admin", "tenants", "update", tenant["id"], "--resume")
    assert resumed["suspended"] is False
    taken = admin("admin", "tenants", "create", name)
    assert taken.exit_code == 3
    assert one_line(taken.stderr).startswith("stratus: 409 ")

    created = admin.ok("admin", "keys", "create", tenant["id"], "ci", "--scope", "jobs:read")
    secret = next(line.split()[-1] for line in created.stdout.splitlines() if "sk_" in line)
    assert "shown only now" in created.stderr
    reader = stratus.as_key(secret)
    assert reader.json("kernels")
    denied = reader("submit", "montecarlo_pi", "-p", "samples=10")
    assert denied.exit_code == 3
    assert one_line(denied.stderr).startswith("stratus: 403 ")
    key = admin.json("admin", "keys", "create", tenant["id"], "other")
    assert set(key["scopes"]) == {"jobs:read", "jobs:write", "data:read", "data:write"}
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("id"))
    assert admin.ok("admin", "keys", "revoke", tenant["id"], key_id).stdout.startswith("revoked")
    gone = reader("kernels")
    assert gone.exit_code == 3
    assert one_line(gone.stderr).startswith("stratus: 401 ")
    listed = admin.json("admin", "keys", "ls", tenant["id"])
    assert [k["id"] for k in listed] == [key["id"], key_id]  # newest first
    assert [(k["name"], k["state"]) for k in listed] == [("other", "active"), ("ci", "revoked")]
    assert listed[1]["revoked_at"]
    assert secret.startswith(listed[1]["prefix"])
    shown = admin.ok("admin", "keys", "ls", tenant["id"]).stdout
    assert key_id in shown
    assert "revoked" in shown
    assert secret not in shown
    assert key["key"] not in shown
    missing = admin("admin", "keys", "ls", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 3
    assert one_line(missing.stderr).startswith("stratus: 404 ")


def test_pools_and_dead_letters(stratus: Stratus) -> None:
    admin = stratus.as_key(ADMIN_KEY)
    pools = {p["pool"]: p for p in admin.json("admin", "pools")}
    assert pools["cpu"]["live_workers"] == 1
    assert "cpu" in admin.ok("admin", "pools").stdout
    queues = admin.json("admin", "dead-letters", "--peek", "0")
    assert queues
    assert all(q["oldest"] == [] for q in queues)
    assert queues[0]["queue"] in admin.ok("admin", "dead-letters").stdout
    refused = stratus("admin", "pools")  # a tenant's key
    assert refused.exit_code == 3
    assert one_line(refused.stderr).startswith("stratus: 403 ")
