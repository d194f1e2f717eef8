"""Webhooks on workflow steps, through the SDK on a live cluster: a step's ``notify`` is
checked as a job's (a refused destination is a 422 naming the step, nothing created) and
delivered, signed, when that step ends; a step without one sends nothing."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from stratus_client import ApiError, Client

from tests.sdk.conftest import MC
from tests.sdk.receiver import receiver

WITHIN_S = 120.0


def signed_by(secret: str, header: str, body: bytes) -> bool:
    fields = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


def test_a_steps_webhook_is_delivered_signed_when_it_ends(client: Client) -> None:
    secret = client.rotate_webhook_secret().secret
    with receiver() as hooks:
        notify = {"url": hooks.url, "events": ["final"]}
        steps: dict[str, dict[str, Any]] = {
            "first": {"kernel": "montecarlo_pi", "params": MC, "notify": notify},
            "then": {
                "kernel": "montecarlo_pi",
                "params": MC,
                "depends_on": [{"step": "first", "condition": "afterok"}],
            },
        }
        workflow = client.submit_workflow("hooked", steps)
        assert client.wait_workflow(workflow.id, timeout=WITHIN_S).state == "SUCCEEDED"
        assert client.get(workflow.steps["first"]).notify is not None
        ((body, header),) = hooks.wait_for(1)
        assert body["job_id"] == workflow.steps["first"]
        assert body["state"] == "SUCCEEDED"
        assert signed_by(secret, header, hooks.received[0][1])
    assert len(hooks.received) == 1  # nothing for the step without notify


def test_a_refused_steps_webhook_is_a_422_naming_the_step(client: Client) -> None:
    client.rotate_webhook_secret()
    steps = {
        "ok": {"kernel": "montecarlo_pi", "params": MC},
        "bad": {
            "kernel": "montecarlo_pi",
            "params": MC,
            "notify": {"url": "https://127.0.0.1/hook", "events": ["state"]},
        },
    }
    with pytest.raises(ApiError) as info:
        client.submit_workflow("refused", steps)
    assert info.value.status == 422
    assert [e["loc"] for e in info.value.errors] == [["body", "steps", "bad", "notify", "url"]]
    assert list(client.list_workflows()) == []
    assert list(client.list()) == []


def test_a_steps_webhook_needs_a_secret(client: Client) -> None:
    with receiver() as hooks:
        steps = {
            "one": {
                "kernel": "montecarlo_pi",
                "params": MC,
                "notify": {"url": hooks.url, "events": ["final"]},
            }
        }
        with pytest.raises(ApiError) as info:
            client.submit_workflow("unsigned", steps)
    assert info.value.status == 422
    assert "webhook secret" in info.value.detail
    assert list(client.list()) == []
