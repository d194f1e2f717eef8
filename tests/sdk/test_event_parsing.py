"""The SDK's reading of ``text/event-stream`` and what an event means for a followed job, without
a cluster (the streams themselves are tested live in test_events.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from stratus_client import Event, Job
from stratus_client._calls import events, follow_log
from stratus_client._events import (
    EVENTS_READ_S,
    KEEP_ALIVE,
    MAX_RECONNECT_S,
    READ_AGAIN,
    SseParser,
    apply,
    read_s,
    reconnect_delay,
)
from stratus_client._wait import Deadline


def feed(parser: SseParser, text: str) -> list[object]:
    found = [parser.feed(line) for line in text.split("\n")]
    return [item for item in found if item is not None]


def test_events_are_parsed_field_by_field() -> None:
    parser = SseParser()
    stream = (
        ": keep-alive\n"
        "id: 7\nevent: job.state\n"
        'data: {"job_id": "j1", "state": "RUNNING",\n'
        'data:  "at": "2026-12-06T10:00:00Z"}\n'
        "retry: 1000\n\n"
        'id: 8\nevent: job.progress\ndata: {"job_id": "j1", "progress": 0.5}\n\n'
    )
    items = feed(parser, stream)
    assert items[0] is KEEP_ALIVE
    first, second = items[1:]
    assert isinstance(first, Event)
    assert isinstance(second, Event)
    assert (first.id, first.type, first.job_id, first.state) == ("7", "job.state", "j1", "RUNNING")
    assert first.data["at"] == "2026-12-06T10:00:00Z"  # two data lines, joined
    assert (second.type, second.progress, second.state) == ("job.progress", 0.5, None)
    assert parser.last_id == "8"


def test_an_event_seen_already_is_dropped() -> None:
    """A resumed stream that repeats an event (or an older one) does not give it twice."""
    parser = SseParser(last_id="8")
    items = feed(parser, 'id: 8\ndata: {"a": 1}\n\nid: 9\ndata: {"a": 2}\n\nid: 3\ndata: {}\n\n')
    assert [i.data for i in items if isinstance(i, Event)] == [{"a": 2}]
    assert parser.last_id == "9"


def test_an_event_without_data_only_moves_the_id() -> None:
    parser = SseParser()
    assert feed(parser, "id: 4\nevent: job.state\n\n") == []
    assert parser.last_id == "4"
    items = feed(parser, "data: not json\n\n")
    assert isinstance(items[0], Event)
    assert (items[0].type, items[0].data, items[0].id) == ("message", {"text": "not json"}, None)


def job(**fields: object) -> Job:
    base = {"id": "j1", "kernel": "k", "device": "cpu", "state": "RUNNING"}
    return Job.model_validate({**base, "created_at": datetime.now(UTC), **fields})


def test_what_an_event_means_for_a_followed_job() -> None:
    running = job()
    progress = Event(id="1", type="job.progress", data={"job_id": "j1", "progress": 0.25})
    moved = apply(running, progress)
    assert isinstance(moved, Job)
    assert moved.progress == 0.25
    assert running.progress is None  # a copy: the job seen before stays as it was
    state = Event(id="2", type="job.state", data={"job_id": "j1", "state": "SUCCEEDED"})
    assert apply(running, state) is READ_AGAIN
    other = Event(id="3", type="job.state", data={"job_id": "j2", "state": "FAILED"})
    assert apply(running, other) is None
    assert apply(running, KEEP_ALIVE) is READ_AGAIN  # a look now and then, as a safety net
    array = job(id="a1", array={"size": 2, "counts": {"RUNNING": 2}})
    element = Event(
        id="4",
        type="job.state",
        data={"job_id": "a1:0", "array_id": "a1", "array_index": 0, "state": "SUCCEEDED"},
    )
    assert apply(array, element) is READ_AGAIN  # the array's counts changed
    element_progress = Event(
        id="5", type="job.progress", data={"job_id": "a1:0", "array_id": "a1", "progress": 0.5}
    )
    assert apply(array, element_progress) is None


def test_an_arrays_progress_event_brings_its_counts() -> None:
    """A chunk flush's progress event of an array carries its counts: applied as they come,
    with no read; counts older than those already seen are left out."""
    array = job(id="a1", array={"size": 4, "counts": {"QUEUED": 4}})
    flushed = Event(
        id="6",
        type="job.progress",
        data={"job_id": "a1", "state": "RUNNING", "progress": 0.5,
              "counts": {"QUEUED": 1, "RUNNING": 1, "SUCCEEDED": 2}},
    )  # fmt: skip
    moved = apply(array, flushed)
    assert isinstance(moved, Job)
    assert moved.array is not None
    assert moved.array.counts == {"QUEUED": 1, "RUNNING": 1, "SUCCEEDED": 2}
    assert array.array is not None
    assert array.array.counts == {"QUEUED": 4}  # a copy
    later = job(id="a1", array={"size": 4, "counts": {"RUNNING": 1, "SUCCEEDED": 3}})
    assert apply(later, flushed) is None  # the read since is newer
    plain = job()  # a job's progress event without counts is its progress
    assert apply(plain, Event(type="job.progress", data={"job_id": "j1", "counts": {}})) is None


def test_stream_requests() -> None:
    first = events("j1", None, 45)
    assert (first.path, first.params) == ("/v1/events", (("job", "j1"),))
    assert "Last-Event-ID" not in first.headers
    resumed = events(None, "41", 45)
    assert resumed.headers["Last-Event-ID"] == "41"
    assert resumed.params == ()
    base = httpx.Timeout(30)
    assert resumed.timeout(base).read == 45
    assert resumed.timeout(base).connect == 30
    log = follow_log("a1:3", 60)
    assert (log.path, log.params) == ("/v1/jobs/a1:3/log", (("follow", "1"),))


def test_read_timeout_and_reconnect_delays() -> None:
    assert read_s(None) == EVENTS_READ_S
    assert 0 < read_s(Deadline(2.0)) <= 2.0
    assert read_s(Deadline(0)) == 0.05
    delays = [reconnect_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[0] == 0.2
    assert delays[-1] == MAX_RECONNECT_S
