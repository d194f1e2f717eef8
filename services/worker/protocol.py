"""Frames between the worker and its pool processes: a 4-byte big-endian length, then one
JSON object (orjson; NumPy arrays and scalars in results serialise as lists and numbers).

Worker -> pool process: ``{"kernel", "device", "params", "inputs", "outputs",
"result_path"}``.
Pool process -> worker: ``{"type": "ready", "devices", "warm_s", "pid", "cpu_total"}`` once at
start, then per job ``{"type": "done", "result"}`` (a large result: ``"result_file": {"path",
"size", "checksum"}`` instead) or ``{"type": "failed", "error", "retryable"}`` (``"fatal"``:
the process exits after it), each with ``cpu_seconds`` and ``wall_seconds`` measured in the
pool process and ``cpu_total``, the process' CPU seconds so far. Before that frame, a kernel
that reports its progress sends ``{"type": "progress", "value"}`` (0.0-1.0), at most once a
second.

A batch (the elements of an array chunk, which read and write no datasets): worker -> pool
process ``{"type": "batch", "kernel", "device", "items": [{"index", "params"}, ...]}``; the
pool process runs the items one after another and answers one done/failed frame per item
(with its ``"index"``), then ``{"type": "batch_done"}``. Between items it looks, without
waiting, for a ``{"type": "stop"}`` frame from the worker and stops early on one; a stop
that arrives after the batch ended is skipped.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any, BinaryIO

import orjson

HEADER = struct.Struct(">I")


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
    return HEADER.pack(len(body)) + body


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    stream.write(encode(message))
    stream.flush()


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream (an unbuffered pipe may return a
    large frame in several reads)."""
    data = stream.read(size)
    if data is None or len(data) == size or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream."""
    head = read_exactly(stream, HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = read_exactly(stream, size)
    if len(body) < size:
        return None
    message: dict[str, Any] = orjson.loads(body)
    return message


async def read_frame_async(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next message; ``asyncio.IncompleteReadError`` when the process has gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    message: dict[str, Any] = orjson.loads(await reader.readexactly(size))
    return message


def temp_path(path: str | Path, pid: int) -> Path:
    """Where pool process ``pid`` writes the output ``path`` before renaming it into place
    (so the worker can remove what a killed process left)."""
    p = Path(path)
    return p.with_name(f".{p.name}.stratus-{pid}.tmp")
