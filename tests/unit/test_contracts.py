"""Pure contracts: kernel catalogue, events, keys, log scrubbing, cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from shared.errors import Invalid
from shared.events import JobDispatched, JobSubmitted, UnknownEvent, parse_event
from shared.kernels import CATALOGUE, get_spec
from shared.logging import scrub_secrets
from shared.pagination import decode_cursor, encode_cursor
from shared.security import generate_key, hash_key, looks_like_key, visible_prefix


def test_catalogue_has_the_six_contract_kernels() -> None:
    assert set(CATALOGUE) == {"saxpy", "matmul", "stencil2d", "nbody", "histogram", "montecarlo_pi"}
    for spec in CATALOGUE.values():
        d = spec.describe()
        assert set(d) == {"name", "description", "devices", "params_schema", "inputs", "outputs"}
        assert d["params_schema"]["type"] == "object"


def test_params_validation_names_the_failing_field() -> None:
    spec = get_spec("montecarlo_pi")
    assert spec.validate_params({"samples": 10}) == {"samples": 10, "seed": 0}
    with pytest.raises(Invalid) as exc:
        spec.validate_params({"samples": 0})
    assert exc.value.errors[0]["loc"] == ["body", "params", "samples"]
    with pytest.raises(Invalid) as exc:
        spec.validate_params({"samples": 5, "bogus": 1})
    assert exc.value.errors[0]["loc"] == ["body", "params", "bogus"]


def test_histogram_range_must_be_ordered() -> None:
    with pytest.raises(Invalid):
        get_spec("histogram").validate_params({"bins": 4, "range": [1.0, 0.0]})


def test_unknown_kernel_is_invalid() -> None:
    with pytest.raises(Invalid) as exc:
        get_spec("no_such_kernel")
    assert exc.value.errors[0]["loc"] == ["body", "kernel"]


def test_event_round_trip_and_routing() -> None:
    e = JobSubmitted(
        tenant_id=uuid.uuid4(), job_id=uuid.uuid4(), kernel="k", device="cpu", priority=3
    )
    back = parse_event(e.to_bytes())
    assert back == e
    assert e.routing_key == "job.submitted"
    d = JobDispatched(job_id=uuid.uuid4(), device="cuda", kernel="k")
    assert d.routing_key == "job.dispatch.cuda"


@pytest.mark.parametrize(
    "body", [b"not json", b"[1]", b'{"type": "nope"}', b'{"type": "job.submitted"}']
)
def test_garbage_events_are_refused(body: bytes) -> None:
    with pytest.raises(UnknownEvent):
        parse_event(body)


def test_keys_are_256_bit_with_visible_prefix_and_keyed_hash() -> None:
    k1, k2 = generate_key(), generate_key()
    assert k1 != k2
    assert k1.startswith("sk_live_")
    assert looks_like_key(k1)
    assert len(k1) - len("sk_live_") >= 43  # 32 bytes base64url
    assert visible_prefix(k1) == k1[:14]
    assert hash_key(k1, "a") != hash_key(k1, "b")
    assert len(hash_key(k1, "a")) == 32


def test_log_scrubbing_masks_keys_and_secret_fields() -> None:
    key = generate_key()
    out = scrub_secrets(
        None,
        "info",
        {
            "event": f"saw {key}",
            "authorization": "Bearer x",
            "admin_key": "zzz",
            "key_prefix": "sk_live_ab",
        },
    )
    assert key not in str(out)
    assert out["authorization"] == "[redacted]"
    assert out["admin_key"] == "[redacted]"
    assert out["key_prefix"] == "sk_live_ab"


def test_cursor_round_trip_and_garbage() -> None:
    at, id_ = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, id_)) == (at, id_)
    with pytest.raises(Invalid):
        decode_cursor("!!!")
    with pytest.raises(Invalid):
        decode_cursor(orjson.dumps([1]).hex())
