"""Server-Sent Events (``GET /v1/events``) read line by line, and a job followed by them: the
parts the sync and async clients share (they only do the I/O).

A stream that drops is opened again with ``Last-Event-ID``: the service resumes after that
event, with no gap and no duplicate; an event whose id is not past the last one seen is
dropped all the same (ids are increasing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from stratus_client._wait import Deadline
from stratus_client.models import Event, Job

# The service sends a comment at least every 15 s: three missed mean the connection is dead.
EVENTS_READ_S: Final = 45.0
# A followed log may be quiet for long (a kernel between two lines): read again after this.
LOG_READ_S: Final = 60.0
# An array's counts come with its progress events (each flush of a chunk of its elements
# sends one, ``counts`` in its data), applied as they come; they are read again on its other
# events (its own state's, its elements'), at most every ARRAY_READ_S, and, a slow fallback
# (a service whose progress events carry no counts), after QUIET_READ_S without an event.
ARRAY_READ_S: Final = 0.25
QUIET_READ_S: Final = 10.0
RECONNECT_S: Final = 0.2  # the first wait before opening a dropped stream again (it doubles)
MAX_RECONNECT_S: Final = 5.0


class KeepAlive:
    """A comment line: the stream is alive, nothing happened."""


KEEP_ALIVE: Final = KeepAlive()


@dataclass
class SseParser:
    """Lines of ``text/event-stream`` in, events out (the WHATWG rules: ``data`` lines joined
    by newlines, a blank line ends an event, ``:`` starts a comment, an unknown field is
    ignored). ``last_id`` is the id to resume after."""

    last_id: str | None = None
    _type: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> Event | KeepAlive | None:
        """The event that ``line`` ends, ``KEEP_ALIVE`` for a comment, else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return KEEP_ALIVE
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        data, kind, event_id = self._data, self._type or "message", self._id
        self._data, self._type, self._id = [], "", None
        if event_id is not None and not is_after(event_id, self.last_id):
            return None  # seen already (a resumed stream that repeats itself)
        if event_id is not None:
            self.last_id = event_id
        if not data:
            return None
        text = "\n".join(data)
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"text": text}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        return Event(id=event_id, type=kind, data=payload)


def is_after(event_id: str, last: str | None) -> bool:
    """``event_id`` comes after ``last`` (numbers compared as numbers; other ids are taken
    as new unless equal)."""
    if last is None:
        return True
    try:
        return int(event_id) > int(last)
    except ValueError:
        return event_id != last


def read_s(deadline: Deadline | None) -> float:
    """The stream's read timeout: ``EVENTS_READ_S``, or less to end on ``deadline``."""
    left: float | None = EVENTS_READ_S
    if deadline is not None:
        left = deadline.clip(EVENTS_READ_S)
    return 0.05 if left is None else max(0.05, left)


def reconnect_delay(drops: int) -> float:
    """The wait before opening the stream again after ``drops`` drops in a row."""
    return float(min(MAX_RECONNECT_S, RECONNECT_S * 2.0 ** max(0, drops - 1)))


READ_AGAIN: Final = object()  # the job must be read again (its state changed)


def apply(job: Job, item: Event | KeepAlive) -> Job | object | None:
    """What ``item`` of the job's stream means for ``job`` (a job or an array): its new
    progress or, for an array, its new counts (applied here), ``READ_AGAIN`` when its state
    or an element's changed, or for
    a keep-alive (a safety net: a state read every 15 s at most), None when nothing did."""
    if isinstance(item, KeepAlive):
        return READ_AGAIN
    ours = item.job_id == job.id or (item.array_id is not None and item.array_id == job.id)
    if not ours:
        return None
    if item.type == "job.progress" and item.job_id == job.id:
        counts = item.data.get("counts")
        if job.array is not None and isinstance(counts, dict):  # an array's, from a flush
            if finished(counts) < finished(job.array.counts):
                return None  # older than the counts read since
            array = job.array.model_copy(update={"counts": {**job.array.counts, **counts}})
            return job.model_copy(update={"array": array})
        if item.progress is not None:
            return job.model_copy(update={"progress": item.progress})
    if item.type == "job.state":
        return READ_AGAIN
    return None


def finished(counts: dict[str, int]) -> int:
    """How many of an array's elements ``counts`` has final."""
    return sum(int(counts.get(s, 0)) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"))


def next_array_read(last_read: float, stale: bool) -> float:
    """When an array followed by its stream is read again (``time.monotonic``): soon after
    its last read once an event made it ``stale``, else once the stream has been quiet."""
    return last_read + (ARRAY_READ_S if stale else QUIET_READ_S)


@dataclass
class LogResume:
    """A followed log opened again starts from the job's first line, in time order; the
    lines the first connection gave came in the order they were written, which may differ
    (a line is stamped when its transaction began). So what was given is skipped by its
    text (a time to the millisecond, its attempt and its words), each as often as it was
    given, and every other line is new: none lost, none given twice, in the stream's
    order."""

    left: dict[str, int]

    @classmethod
    def after(cls, given: dict[str, int]) -> LogResume:
        """For a stream opened when ``given`` (each line's count) was given."""
        return cls(dict(given))

    def new(self, line: str) -> bool:
        """Whether ``line`` of the stream opened again was not given before."""
        count = self.left.get(line, 0)
        if count:
            self.left[line] = count - 1
            return False
        return True
