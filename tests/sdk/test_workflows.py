"""Dependencies, workflows, receipts and the webhook secret through the SDK, sync and async,
against a live cluster."""

from __future__ import annotations

from typing import Any

import pytest
from stratus_client import ApiError, AsyncClient, Client, JobState, Workflow

from tests.sdk.conftest import MC, new_key

STEPS: dict[str, dict[str, Any]] = {
    "first": {"kernel": "montecarlo_pi", "params": MC},
    "second": {
        "kernel": "montecarlo_pi",
        "params": {**MC, "seed": 2},
        "depends_on": [{"step": "first", "condition": "afterok"}],
    },
}


def _in_order(client: Client, workflow: Workflow) -> None:
    """Its steps are the workflow's, and the second started once the first had ended."""
    first, second = client.get(workflow.steps["first"]), client.get(workflow.steps["second"])
    assert first.workflow_id == second.workflow_id == workflow.id
    assert second.depends_on == [{"job": first.id, "condition": "afterok"}]
    assert first.finished_at is not None
    assert second.started_at is not None
    assert second.started_at >= first.finished_at


async def test_a_two_step_workflow_runs_in_order(client: Client, aclient: AsyncClient) -> None:
    submitted = client.submit_workflow("two-steps", STEPS)
    assert submitted.name == "two-steps"
    assert set(submitted.steps) == {"first", "second"}
    assert not submitted.is_final
    done = client.wait_workflow(submitted.id, timeout=120)
    assert done.state == JobState.SUCCEEDED
    assert done.succeeded
    assert done.counts.get("SUCCEEDED") == 2
    assert done.finished_at is not None
    assert client.get_workflow(submitted.id) == done
    _in_order(client, done)

    asubmitted = await aclient.submit_workflow("two-steps-async", STEPS)
    adone = await aclient.wait_workflow(asubmitted.id, timeout=120)
    assert adone.state == JobState.SUCCEEDED
    assert (await aclient.get_workflow(asubmitted.id)).steps == asubmitted.steps
    _in_order(client, adone)


async def test_the_idempotency_key_makes_one_workflow(client: Client, aclient: AsyncClient) -> None:
    once = client.submit_workflow("keyed", STEPS, idempotency_key="wf-key-1")
    again = client.submit_workflow("keyed", STEPS, idempotency_key="wf-key-1")
    assert again.id == once.id
    assert (await aclient.submit_workflow("keyed", STEPS, idempotency_key="wf-key-1")).id == once.id
    other = client.submit_workflow("keyed", STEPS)  # a new key each call: a new workflow
    assert other.id != once.id


async def test_a_cycle_is_a_422_and_creates_nothing(client: Client, aclient: AsyncClient) -> None:
    cycle: dict[str, dict[str, Any]] = {
        "a": {**STEPS["first"], "depends_on": [{"step": "b", "condition": "afterok"}]},
        "b": {**STEPS["first"], "depends_on": [{"step": "a", "condition": "afterok"}]},
    }
    with pytest.raises(ApiError) as info:
        client.submit_workflow("cycle", cycle)
    assert info.value.status == 422
    with pytest.raises(ApiError) as ainfo:
        await aclient.submit_workflow("cycle", cycle)
    assert ainfo.value.status == 422
    assert list(client.list_workflows()) == []
    assert list(client.list()) == []


async def test_list_walks_pages_and_cancel_stops_every_step(url: str, admin: Client) -> None:
    """A tenant with no running slot: its steps wait until the workflow is cancelled; a
    second cancel is the service's 409."""
    key = new_key(admin, "wf-cancel", max_running_jobs=0)
    with Client(url, key, page_size=1) as c:
        ids = [c.submit_workflow(f"held-{i}", STEPS).id for i in range(3)]
        assert [w.id for w in c.list_workflows()] == ids[::-1]
        cancelled = c.cancel_workflow(ids[0])
        assert cancelled.id == ids[0]
        final = c.wait_workflow(ids[0], timeout=60)
        assert final.state == JobState.CANCELLED
        assert all(c.get(j).state == JobState.CANCELLED for j in final.steps.values())
        with pytest.raises(ApiError) as info:
            c.cancel_workflow(ids[0])
        assert info.value.status == 409
    async with AsyncClient(url, key, page_size=2) as ac:
        assert [w.id async for w in ac.list_workflows()] == ids[::-1]
        await ac.cancel_workflow(ids[1])
        assert (await ac.wait_workflow(ids[1], timeout=60)).state == JobState.CANCELLED
        with pytest.raises(TimeoutError):
            await ac.wait_workflow(ids[2], timeout=0.5)
        await ac.cancel_workflow(ids[2])


async def test_depends_on_and_the_receipt(client: Client, aclient: AsyncClient) -> None:
    """A job that depends on another starts once it SUCCEEDED; a SUCCEEDED job carries its
    receipt; an unknown dependency is a 422."""
    first = client.submit("montecarlo_pi", params=MC)
    after = client.submit(
        "montecarlo_pi", params=MC, depends_on=[{"job": first.id, "condition": "afterok"}]
    )
    assert after.depends_on == [{"job": first.id, "condition": "afterok"}]
    done = client.wait(after.id, timeout=120)
    assert done.succeeded
    first = client.get(first.id)
    assert first.finished_at is not None
    assert done.started_at is not None
    assert done.started_at >= first.finished_at
    receipt = done.receipt
    assert receipt is not None
    assert (receipt.kernel, receipt.params) == ("montecarlo_pi", MC)
    assert receipt.worker == done.worker
    assert {"numba", "numpy", "python"} <= set(receipt.software)

    aafter = await aclient.submit(
        "montecarlo_pi", params=MC, depends_on=[{"job": first.id, "condition": "afterany"}]
    )
    assert (await aclient.wait(aafter.id, timeout=120)).receipt is not None
    with pytest.raises(ApiError) as info:
        client.submit(
            "montecarlo_pi",
            params=MC,
            depends_on=[{"job": "00000000-0000-0000-0000-000000000000", "condition": "afterok"}],
        )
    assert info.value.status == 422


async def test_webhook_secret_and_a_refused_destination(
    client: Client, aclient: AsyncClient
) -> None:
    """Each rotation is a new secret; a loopback destination is refused (422)."""
    one = client.rotate_webhook_secret()
    two = await aclient.rotate_webhook_secret()
    assert one.secret
    assert two.secret
    assert one.secret != two.secret
    with pytest.raises(ApiError) as info:
        client.submit(
            "montecarlo_pi",
            params=MC,
            notify={"url": "https://127.0.0.1/hook", "events": ["final"]},
        )
    assert info.value.status == 422
    assert list(client.list()) == []
