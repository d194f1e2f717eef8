"""Response bodies of the events routes (the stream itself is ``text/event-stream``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class HistoryItem(BaseModel):
    """One transition of a job: the state it entered, when, why, in which attempt, on which
    worker."""

    at: datetime
    state: str
    reason: str | None
    attempt: int
    worker: str | None


class History(BaseModel):
    items: list[HistoryItem]
