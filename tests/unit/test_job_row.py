"""The job row is defined once (``shared.jobs.row``): the submission's insert, the replay's
read and the worker's claim are built from the ``jobs`` table and the models, so a job field
added to the model, the migration and the API schema is written and read with no other edit.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from sqlalchemy import Column, MetaData, Table, Text

from services.gateway.jobs import service, writer
from services.gateway.jobs.schemas import JobOut, JobSubmit
from shared.jobs.row import JOBS, Columns, stored
from shared.jobs.store import CLAIM_QUEUED, CLAIMED, Claim


def insert_list(statement: str) -> list[str]:
    """The column list of ``INSERT INTO jobs (...)``."""
    found = re.search(r"INSERT INTO jobs \(([^)]*)\)", statement)
    assert found is not None
    return [c.strip() for c in found.group(1).split(",")]


def unnest_types(statement: str, alias: str) -> dict[str, str]:
    """Column -> array type of the ``unnest(...) WITH ORDINALITY AS alias(...)``."""
    found = re.search(rf"unnest\(([^)]*)\) WITH ORDINALITY AS {alias}\(([^)]*)\)", statement)
    assert found is not None
    arrays = [a.strip() for a in found.group(1).split(",")]
    names = [n.strip() for n in found.group(2).split(",")][:-1]  # the ordinality last
    assert len(arrays) == len(names)
    return {n: a.split("::")[1].removesuffix("[]") for n, a in zip(names, arrays, strict=True)}


def selected(statement: str) -> list[str]:
    """The names a statement's last SELECT answers under."""
    found = re.findall(r"SELECT (.*?) FROM", statement, flags=re.S)
    return [item.split(" AS ")[-1].strip() for item in found[-1].split(",")]


def parameters(statement: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", statement)}


def test_a_submission_writes_every_request_field_that_is_a_column() -> None:
    from_request = [f for f in JobSubmit.model_fields if f in JOBS.c]
    assert from_request  # kernel, device, params ...
    assert list(writer.FROM_REQUEST) == from_request
    assert insert_list(writer.INSERT_JOBS) == [*writer.SET_BY_GATEWAY, *from_request]
    # every column it leaves out has a default or may be empty
    for column in JOBS.c:
        if column.name not in writer.WRITTEN.columns:
            assert column.nullable or column.server_default is not None, column.name


def test_the_insert_types_each_array_as_its_column() -> None:
    types = unnest_types(writer.INSERT_JOBS, "r")
    assert types["id"] == types["tenant_id"] == "uuid"
    assert types["priority"] == "int2"
    assert types["timeout_s"] == "int4"
    assert types["created_at"] == "timestamptz"
    assert types["kernel"] == "text"  # not varchar(100): a cast would cut a long name
    assert types["params"] == "text"  # JSON as text, cast back in the statement
    assert "CAST(r.params AS jsonb)" in writer.INSERT_JOBS


def test_the_insert_takes_one_parameter_per_argument() -> None:
    job_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    job = new_job(tenant_id, job_id=job_id)
    arguments = writer.arguments(writer.WRITTEN, [job])
    assert parameters(writer.INSERT_JOBS) == set(range(1, len(arguments) + 1))
    by_column = dict(zip(writer.WRITTEN.fields, arguments, strict=False))
    assert by_column["id"] == [job_id]
    assert by_column["params"] == ['{"samples":1}']  # JSON as text
    assert arguments[-1] == [None]  # max_queued: no limit


def new_job(tenant_id: uuid.UUID, *, job_id: uuid.UUID | None = None) -> writer.NewJob:
    data = JobSubmit(kernel="montecarlo_pi", params={"samples": 1}, labels={"a": "b"})
    job = service._new_job(
        tenant_id=tenant_id,
        data=data,
        max_queued=0,
        kernel="montecarlo_pi",
        params={"samples": 1},
        timeout_s=60,
        max_retries=2,
        idempotency_key=None,
        request_hash=None,
    )
    if job_id is not None:
        job.row["id"] = job_id
    job.max_queued = None
    return job


def test_a_job_with_inputs_is_stored_pending_for_admission_and_its_stage_in() -> None:
    data = JobSubmit(kernel="smooth", inputs={"data": "in/x.npy"})
    job = service._new_job(tenant_id=uuid.uuid4(), data=data, max_queued=0)
    assert (job.row["state"], job.row["queued_at"], job.row["state_reason"]) == (
        "PENDING",
        None,
        None,
    )


def test_a_new_job_row_has_every_written_column_and_its_answer_is_a_job_out() -> None:
    job = new_job(uuid.uuid4())
    assert set(job.row) == set(writer.WRITTEN.fields)
    assert (job.row["state"], job.row["queued_at"]) == ("QUEUED", job.row["created_at"])
    assert job.row["labels"] == {"a": "b"}  # as the request gave it
    answer = service._created(job)
    JobOut.model_validate(answer.model_dump())  # every field of the contract is there
    assert answer.id == str(job.row["id"])
    for name, value in answer.model_dump(exclude={"id"}).items():
        assert value == job.row.get(name), name


def test_a_replay_reads_every_field_of_job_out_by_name() -> None:
    names = selected(service._FIND_BY_KEY)
    assert names == [*stored(JobOut.model_fields), "request_hash", "is_array"]
    assert "array" not in names  # an array's settings and counts are not in its jobs row
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        **dict.fromkeys(names),
        "id": uuid.uuid4(),
        "kernel": "k",
        "device": "cpu",
        "params": '{"n": 1}',
        "inputs": "{}",
        "outputs": "{}",
        "labels": '{"x": "y"}',
        "output_tier": "local",
        "priority": 3,
        "timeout_s": 5,
        "max_retries": 0,
        "checkpoint_interval_s": 30,
        "checkpoints": 0,
        "preemptions": 0,
        "state": "QUEUED",
        "attempts": 0,
        "created_at": now,
        "result": '{"pi": 3.14}',
    }
    out = JobOut.model_validate(service._REPLAYED.decode(dict(reversed(row.items()))))
    assert (out.params, out.labels, out.result) == ({"n": 1}, {"x": "y"}, {"pi": 3.14})
    assert (out.state, out.priority, out.created_at) == ("QUEUED", 3, now)


def test_a_claim_is_read_by_name_from_the_statement_and_from_the_model() -> None:
    assert selected(CLAIM_QUEUED) == [f.name for f in fields(Claim)]
    assert dict(zip(CLAIMED.fields, CLAIMED.columns, strict=True))["attempt"] == "attempts"
    job_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    record = {
        "output_tier": "archive",
        "timeout_s": 9,
        "checkpoint_interval_s": 30,
        "outputs": '{"y": "out/y"}',
        "inputs": "{}",
        "params": '{"a": 2}',
        "kernel": "saxpy",
        "attempt": 3,
        "tenant_id": tenant_id,
        "job_id": job_id,
    }
    claim = Claim(**CLAIMED.decode(record))
    expected = Claim(job_id, tenant_id, 3, "saxpy", {"a": 2}, {}, {"y": "out/y"}, 9, "archive")
    assert claim == expected
    # a SQLAlchemy Row (``session_fetch``) is read through its mapping
    assert Claim(**CLAIMED.decode(SimpleNamespace(_mapping=record))) == expected
    job = SimpleNamespace(
        id=job_id,
        tenant_id=tenant_id,
        attempts=3,
        kernel="saxpy",
        params={"a": 2},
        inputs={},
        outputs={"y": "out/y"},
        timeout_s=9,
        output_tier="archive",
        checkpoint_interval_s=30,
    )
    assert Claim(**CLAIMED.attributes(job)) == expected


def test_columns_refuse_what_the_table_does_not_have() -> None:
    with pytest.raises(ValueError, match="not columns of jobs: colour"):
        Columns(("id", "colour"))
    with pytest.raises(ValueError, match="named twice"):
        Columns(("job_id", "id"), renamed={"job_id": "id"})
    assert stored(("id", "colour", "kernel")) == ("id", "kernel")


# --- Worked example: a ``comment`` on every job ----------------------------------------
# The three edits: the model (here a copy of the table with the column), the migration (the
# database test of the writer adds the column) and the API schema (``JobSubmit`` and
# ``JobOut`` gain the field). Everything else is built by the same functions as at import.


def with_comment() -> Table:
    table = JOBS.to_metadata(MetaData())
    table.append_column(Column("comment", Text))
    return table


class SubmitWithComment(JobSubmit):
    comment: str | None = None


class OutWithComment(JobOut):
    comment: str | None = None


def test_a_new_field_is_written_and_read_with_no_other_edit() -> None:
    table = with_comment()
    written = writer.written_columns(SubmitWithComment, table)
    statement = writer.insert_statement(written)
    assert insert_list(statement)[-1] == "comment"
    assert unnest_types(statement, "r")["comment"] == "text"
    job = writer.NewJob({**new_job(uuid.uuid4()).row, "comment": "hello"})
    arguments = writer.arguments(written, [job])
    assert parameters(statement) == set(range(1, len(arguments) + 1))
    assert arguments[written.fields.index("comment")] == ["hello"]

    replay = Columns(stored((*OutWithComment.model_fields, "request_hash"), table), table=table)
    assert replay.select().endswith("comment, request_hash")
    record = {name: orjson.dumps({}).decode() for name in replay.fields} | {"comment": "hi"}
    assert replay.decode(record)["comment"] == "hi"


def test_models_name_only_columns() -> None:
    """What the API shows and the worker runs are columns of the table (the ORM rows of
    ``GET /v1/jobs`` become ``JobOut`` by the same names)."""
    assert set(JobOut.model_fields) - {"array"} <= set(JOBS.c.keys())
    assert set(CLAIMED.columns) <= set(JOBS.c.keys())
