"""The worked example of ``tests/unit/test_job_row.py`` against PostgreSQL: once the migration
has added a job column, the submission statement built from the model and the API schema
writes the new field, and the replay's read returns it, with no other edit."""

from __future__ import annotations

import uuid

import asyncpg

from services.gateway.jobs import writer
from shared.jobs.row import Columns, stored
from shared.settings import CommonSettings
from tests.gateway.conftest import make_tenant
from tests.gateway.test_group_commit import own_gateway, submitted_events
from tests.gateway.test_job_writer import new_row
from tests.unit.test_job_row import OutWithComment, SubmitWithComment, with_comment


async def test_a_new_job_field_is_written_and_read_back(settings: CommonSettings) -> None:
    async with own_gateway(settings, "job_field") as gw:
        t = await make_tenant(gw.client)
        conn = await asyncpg.connect(gw.dsn)
        try:
            await conn.execute("ALTER TABLE jobs ADD COLUMN comment text")  # the migration
            table = with_comment()  # the model
            written = writer.written_columns(SubmitWithComment, table)  # the schema
            job = new_row(uuid.UUID(t.tenant_id), comment="hello")
            found = await conn.fetch(
                writer.insert_statement(written), *writer.arguments(written, [job])
            )
            assert [(r["id"], r["inserted"]) for r in found] == [(job.id, True)]

            replay = Columns(
                stored((*OutWithComment.model_fields, "request_hash"), table), table=table
            )
            read = f"SELECT {replay.select()} FROM jobs WHERE id = $1"  # noqa: S608
            out = OutWithComment.model_validate(replay.decode(await conn.fetchrow(read, job.id)))
        finally:
            await conn.close()
        assert (out.id, out.comment, out.state, out.params) == (
            str(job.id),
            "hello",
            "PENDING",
            {"samples": 1},
        )
        assert await submitted_events(gw, t.tenant_id) == {}
