"""The SDK's pure parts, without a cluster: the retry rules, Retry-After, problems as
ApiError, configuration, request bodies and paths, and .npy in chunks."""

from __future__ import annotations

import ast
import email.utils
import io
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from stratus_client import ApiError, Client, ConfigurationError, RetryPolicy
from stratus_client._calls import dataset_path, job_path, submission, submit
from stratus_client._npy import NpyReader, npy_parts
from stratus_client._wait import Deadline, poll_delays
from stratus_client.retry import parse_retry_after

REQUEST = httpx.Request("POST", "http://stratus/v1/jobs")


def test_retried_statuses_wait_their_retry_after() -> None:
    policy = RetryPolicy(total_s=10)
    assert policy.after_status(429, 2.0, attempt=1, elapsed_s=0) == 2.0
    assert policy.after_status(503, 1.0, attempt=3, elapsed_s=5) == 1.0
    no_header = policy.after_status(503, None, attempt=1, elapsed_s=0)
    assert no_header is not None
    assert 0.2 <= no_header <= 0.24  # the first backoff and its jitter


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 500, 502])
def test_other_statuses_are_never_retried(status: int) -> None:
    assert RetryPolicy().after_status(status, 1.0, attempt=1, elapsed_s=0) is None


def test_retries_stop_at_the_budget() -> None:
    policy = RetryPolicy(total_s=10)
    assert policy.after_status(429, 3.0, attempt=4, elapsed_s=7.0) == 3.0
    assert policy.after_status(429, 3.0, attempt=4, elapsed_s=7.5) is None
    assert RetryPolicy(total_s=0).after_status(429, 0.5, attempt=1, elapsed_s=0) is None


def test_failed_connections_are_retried_only_when_safe() -> None:
    policy = RetryPolicy()
    refused = httpx.ConnectError("refused", request=REQUEST)
    lost = httpx.RemoteProtocolError("closed", request=REQUEST)
    assert policy.after_error(refused, idempotent=False, attempt=1, elapsed_s=0) is not None
    assert policy.after_error(lost, idempotent=True, attempt=1, elapsed_s=0) is not None
    assert policy.after_error(lost, idempotent=False, attempt=1, elapsed_s=0) is None
    assert policy.after_error(ValueError("x"), idempotent=True, attempt=1, elapsed_s=0) is None


def test_backoff_grows_to_its_cap() -> None:
    policy = RetryPolicy(backoff_s=0.5, multiplier=2, max_backoff_s=3)
    for attempt, base in enumerate([0.5, 1, 2, 3, 3, 3], start=1):
        assert base <= policy.backoff(attempt) <= base * 1.2


def test_retry_after_as_seconds_or_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None
    assert 55 <= seconds <= 61
    earlier = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(earlier) == 0.0


def test_a_problem_document_is_an_api_error() -> None:
    body = {
        "type": "https://stratus.dev/problems/validation",
        "title": "Unprocessable",
        "status": 422,
        "detail": "params.samples: too small",
        "errors": [{"loc": ["body", "params", "samples"], "msg": "too small"}],
    }
    response = httpx.Response(422, json=body, headers={"Retry-After": "2"}, request=REQUEST)
    error = ApiError.from_response(response)
    assert (error.status, error.type, error.title) == (422, body["type"], "Unprocessable")
    assert error.errors == body["errors"]
    assert error.retry_after == 2.0
    assert "params.samples" in str(error)


def test_a_page_that_is_no_problem_is_still_an_api_error() -> None:
    response = httpx.Response(502, text="<html>bad gateway</html>", request=REQUEST)
    error = ApiError.from_response(response)
    assert (error.status, error.title, error.errors) == (502, "Bad Gateway", [])
    assert "bad gateway" in error.detail


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATUS_URL", raising=False)
    monkeypatch.delenv("STRATUS_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="STRATUS_URL"):
        Client()
    with pytest.raises(ConfigurationError, match="STRATUS_API_KEY"):
        Client("http://stratus")
    monkeypatch.setenv("STRATUS_URL", "http://env-host:8000/")
    monkeypatch.setenv("STRATUS_API_KEY", "env-key")
    with Client() as c:
        assert c.base_url == "http://env-host:8000"
    with Client("http://arg-host", "arg-key") as c:
        assert c.base_url == "http://arg-host"


def test_a_submission_holds_only_what_was_given() -> None:
    assert submission("montecarlo_pi") == {"kernel": "montecarlo_pi"}
    body = submission(
        "saxpy",
        params={"a": 2},
        inputs={"x": "x.npy"},
        priority=0,
        array={"size": 3},
        extra={"checkpoint_interval_s": 0},
    )
    assert body == {
        "kernel": "saxpy",
        "params": {"a": 2},
        "inputs": {"x": "x.npy"},
        "priority": 0,
        "array": {"size": 3},
        "checkpoint_interval_s": 0,
    }


def test_each_submission_has_a_key_of_its_own_unless_given() -> None:
    first, second = submit({"kernel": "k"}, None), submit({"kernel": "k"}, None)
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert submit({"kernel": "k"}, "mine").headers["Idempotency-Key"] == "mine"
    assert first.idempotent  # so a lost answer is retried, with the same key


def test_ids_and_names_stay_one_path_segment() -> None:
    assert job_path("a1b2:7") == "/v1/jobs/a1b2:7"
    assert job_path("../tenants") == "/v1/jobs/..%2Ftenants"
    assert dataset_path("runs/a b.npy") == "/v1/datasets/runs/a%20b.npy"


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        np.arange(20.0)[::3],  # not contiguous: sent as a C-ordered copy
        np.array(2.5),
        np.zeros((0, 3)),
        np.random.default_rng(0).random(300_000),  # more than one chunk
    ],
)
def test_npy_round_trip_in_any_chunks(array: np.ndarray[Any, Any]) -> None:
    size, chunks = npy_parts(array)
    data = b"".join(chunks)
    assert len(data) == size
    assert np.array_equal(np.load(io.BytesIO(data)), array)
    for step in (1, 7, 4096) if size < 10_000 else (65_536, 100_003):
        reader = NpyReader()
        for at in range(0, len(data), step):
            reader.feed(data[at : at + step])
        out = reader.result()
        assert out.dtype == array.dtype
        assert out.shape == array.shape
        assert np.array_equal(out, array)


def test_npy_files_numpy_wrote_are_read() -> None:
    array = np.asfortranarray(np.arange(24.0).reshape(4, 6))
    buffer = io.BytesIO()
    np.save(buffer, array)
    reader = NpyReader()
    reader.feed(buffer.getvalue())
    assert np.array_equal(reader.result(), array)


def test_npy_refuses_pickles_and_short_or_long_files() -> None:
    with pytest.raises(ValueError, match="pickles"):
        npy_parts(np.array([None, 1], dtype=object))
    _, chunks = npy_parts(np.arange(10.0))
    data = b"".join(chunks)
    short = NpyReader()
    short.feed(data[:-1])
    with pytest.raises(ValueError, match="ended early"):
        short.result()
    with pytest.raises(ValueError, match="longer"):
        NpyReader().feed(data + b"x")


def test_polls_grow_and_end_on_the_deadline() -> None:
    delays = poll_delays()
    first = [next(delays) for _ in range(20)]
    assert first[0] < first[1] < first[2]
    assert max(first) == 2.0
    assert Deadline(None).clip(5.0) == 5.0
    clipped = Deadline(0.5).clip(5.0)
    assert clipped is not None
    assert clipped <= 0.5
    assert Deadline(0).clip(1.0) is None


ALLOWED_IMPORTS = {"httpx", "pydantic", "numpy", "stratus_client"}
CLI_IMPORTS = {"typer", "rich", "yaml"}  # the command line's extra (yaml: workflow files)


def imported(paths: list[Path]) -> set[str]:
    """The modules ``paths`` import (``a.b`` for ``import a.b`` and ``from a.b import c``)."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return found


def test_the_sdk_imports_nothing_of_the_service() -> None:
    """Built on the public API only: the standard library, httpx, pydantic, NumPy; the
    command line (``cli/``) also typer, rich and PyYAML, and the SDK never needs the command
    line."""
    package = Path(__file__).parents[2] / "clients" / "python" / "stratus_client"
    cli = sorted((package / "cli").rglob("*.py"))
    core = imported([p for p in package.rglob("*.py") if p not in cli])
    assert {m.split(".")[0] for m in core} - ALLOWED_IMPORTS <= sys.stdlib_module_names
    assert "numpy" in core  # the scan sees the lazy import too
    assert not any(m.split(".")[:2] == ["stratus_client", "cli"] for m in core)
    tops = {m.split(".")[0] for m in imported(cli)}
    assert tops - ALLOWED_IMPORTS - CLI_IMPORTS <= sys.stdlib_module_names
    assert tops >= CLI_IMPORTS
