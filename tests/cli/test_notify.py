"""``stratus webhook-secret`` and ``--notify`` on ``submit`` and ``workflow submit``,
against the cluster: the webhook is stored with the job (``--json`` shows it), delivered
signed when the job ends, given to the workflow's steps that name none, and a refused
destination is the API's error (exit 3, one line)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from tests.cli.conftest import MC, Stratus, one_line
from tests.sdk.receiver import receiver

STEPS = """\
name: hooked
steps:
  own:
    kernel: montecarlo_pi
    params: {samples: 1000, seed: 1}
    notify: {url: "%s", events: [state]}
  given:
    kernel: montecarlo_pi
    params: {samples: 1000, seed: 2}
    depends_on: [{step: own, condition: afterok}]
"""


def _signed(secret: str, header: str, body: bytes) -> bool:
    fields = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


def test_submit_notify_delivers_signed(stratus: Stratus) -> None:
    secret = one_line(stratus.ok("webhook-secret").stdout)
    assert json.loads(stratus.ok("webhook-secret", "--json").stdout)["secret"] != secret
    secret = one_line(stratus.ok("webhook-secret").stdout)
    with receiver() as hooks:
        job = stratus.json("submit", "montecarlo_pi", *MC, "--notify", hooks.url, "--wait")
        assert job["notify"] == {"url": hooks.url, "events": ["final"]}
        ((body, header),) = hooks.wait_for(1)
        assert (body["job_id"], body["state"]) == (job["id"], "SUCCEEDED")
        assert _signed(secret, header, hooks.received[0][1])


def test_workflow_notify_goes_to_steps_without_their_own(stratus: Stratus, tmp_path: Path) -> None:
    stratus.ok("webhook-secret")
    with receiver() as own, receiver() as given:
        path = tmp_path / "hooked.yaml"
        path.write_text(STEPS % own.url)
        flow = stratus.json("workflow", "submit", str(path), "--notify", given.url, "--wait")
        assert flow["state"] == "SUCCEEDED"
        first = stratus.json("show", flow["steps"]["own"])
        second = stratus.json("show", flow["steps"]["given"])
        assert first["notify"] == {"url": own.url, "events": ["state"]}
        assert second["notify"] == {"url": given.url, "events": ["final"]}
        ((body, _),) = given.wait_for(1)
        assert body["job_id"] == second["id"]
        # every change of state, not the final only (in any order: they go out concurrently)
        states = own.states_until("RUNNING", "SUCCEEDED")
        assert set(states) <= {"PENDING", "QUEUED", "RUNNING", "SUCCEEDED"}, states


def test_a_refused_destination_is_exit_3(stratus: Stratus) -> None:
    stratus.ok("webhook-secret")
    refused = stratus("submit", "montecarlo_pi", *MC, "--notify", "https://127.0.0.1/hook")
    assert refused.exit_code == 3
    assert "refused" in one_line(refused.stderr)
    assert json.loads(stratus.ok("jobs", "--json").stdout) == []
    bad = stratus("submit", "montecarlo_pi", "--notify", "https://x.example", "--notify-on", "x")
    assert bad.exit_code == 2
