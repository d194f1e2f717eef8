"""Checkpoints of a running kernel: its state between two blocks of its loop, on the data tier.

A kernel that iterates (``stencil2d``, ``nbody``, ``montecarlo_pi``) runs its loop in blocks
(``blocks``) and, after each one, hands its state to ``after_block``: the step (or stream)
count done and the arrays and numbers from which the rest of the run goes on exactly as if
it had not stopped. Once at least ``interval_s`` has passed since the last one (or at once
when the worker asks for a release: a drain or a preemption), the state is written as the
job's one checkpoint file; a later attempt, on any worker that sees the tier, starts from it
(``resume``) and its result is bit for bit the result of an uninterrupted run.

The file: ``MAGIC``, a 4-byte length and a JSON header (kernel, device, step, the arrays'
dtypes and shapes, the numbers, and who saved it: the attempt, the worker and when), the
arrays' bytes in C order, then the SHA-256 of all that.
It is written to a temporary file beside the checkpoint, flushed and ``fsync``ed, then renamed
over it (``os.replace``): a reader sees the previous checkpoint or the new one, never part of
one. A file that does not end in its own digest (a torn write, a disk error) is not read: the
attempt starts from the start. A checkpoint larger than ``max_bytes`` is not written (a line
says so); each job has at most one file, removed when the job is final (``remove``).

In the pool process the worker's request names the folder (``STRATUS_CHECKPOINT`` frames
carry nothing else): ``session`` makes it the current one for the job; a kernel asks
``current()``. Without a session (benchmarks, tests, array chunks) ``current()`` is disabled:
one block, no file, the kernel runs as it always did. ``SIGUSR1`` asks the running kernel to
checkpoint after its block and stop (``Released``): the worker's drain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.worker import progress
from shared.storage.checkpoints import DIR_NAME as DIR_NAME  # where the files live
from shared.storage.checkpoints import folder_for as folder_for
from shared.storage.checkpoints import remove as remove

MAGIC = b"STRATUS-CHECKPOINT-1\n"
FILE = "checkpoint.bin"
DIGEST = 32
LENGTH = struct.Struct(">I")
DEFAULT_MAX_BYTES = 8 * 2**30
RELEASE_SIGNAL = signal.SIGUSR1


class Released(Exception):
    """The kernel saved a checkpoint at ``step`` and stopped, as the worker asked."""

    def __init__(self, step: int) -> None:
        super().__init__(f"released at step {step}")
        self.step = step


@dataclass
class State:
    """A kernel's state after ``step`` units of work (steps, streams)."""

    step: int
    arrays: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def write(
    path: Path,
    state: State,
    *,
    kernel: str,
    device: str,
    max_bytes: int,
    saved_by: Mapping[str, Any] | None = None,
) -> int | None:
    """``state`` as the checkpoint file ``path``, replacing the previous one atomically; its
    size, or None when it would be larger than ``max_bytes`` (nothing written). ``saved_by``
    (the attempt and the worker) goes into the header with the time of the save: a later
    attempt that resumes from the file can record a save whose own record a kill cut off."""
    arrays = {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}
    header = json.dumps(
        {
            "kernel": kernel,
            "device": device,
            "step": int(state.step),
            "numbers": state.numbers,
            "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()],
            "saved_by": {**saved_by, "at": time.time()} if saved_by else None,
        }
    ).encode()
    size = len(MAGIC) + LENGTH.size + len(header) + sum(a.nbytes for a in arrays.values())
    if size + DIGEST > max_bytes:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for piece in (MAGIC, LENGTH.pack(len(header)), header):
                f.write(piece)
                digest.update(piece)
            for arr in arrays.values():
                raw = arr.reshape(-1).view(np.uint8)  # the array's own bytes, no copy
                f.write(raw.data)
                digest.update(raw.data)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    return size + DIGEST


def read(path: Path, *, kernel: str) -> tuple[State, dict[str, Any]] | None:
    """The checkpoint at ``path`` and its header, or None: no file, another kernel's, or a
    file that is not whole (its digest does not match)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < len(MAGIC) + LENGTH.size + DIGEST or not data.startswith(MAGIC):
        return None
    body, digest = data[:-DIGEST], data[-DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        return None
    at = len(MAGIC)
    (n,) = LENGTH.unpack_from(body, at)
    at += LENGTH.size
    try:
        header = json.loads(body[at : at + n])
    except ValueError:
        return None
    at += n
    if header.get("kernel") != kernel:
        return None
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(body, dtype=dt, count=count, offset=at).reshape(shape).copy()
        at += count * dt.itemsize
        arrays[name] = arr
    return State(int(header["step"]), arrays, dict(header.get("numbers", {}))), header


Event = Callable[[dict[str, Any]], None]


class Checkpointer:
    """The checkpoints of the job the pool process runs (``current``)."""

    def __init__(
        self,
        folder: Path | None,
        interval_s: float,
        *,
        kernel: str = "",
        device: str = "cpu",
        portable: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_event: Event | None = None,
        saved_by: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self.kernel = kernel
        self.device = device
        self.portable = portable  # a checkpoint of another device may be resumed
        self.max_bytes = max_bytes
        self.on_event = on_event
        self.saved_by = saved_by  # the attempt and the worker, written into each file
        self.saved = 0
        self.resumed_from: int | None = None
        self.last = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.folder is not None and self.interval_s > 0

    @property
    def path(self) -> Path:
        assert self.folder is not None
        return self.folder / FILE

    def for_kernel(self, kernel: str, device: str, *, portable: bool = True) -> Checkpointer:
        self.kernel, self.device, self.portable = kernel, device, portable
        return self

    def resume(self) -> State | None:
        """The last checkpoint of this job, if one can be resumed here."""
        if not self.enabled:
            return None
        found = read(self.path, kernel=self.kernel)
        if found is None:
            return None
        state, header = found
        if not self.portable and header.get("device") != self.device:
            return None  # this kernel's arithmetic differs between devices
        self.resumed_from = state.step
        self.last = time.monotonic()
        saved_by = header.get("saved_by")
        self._event(
            {"event": "resumed", "step": state.step}
            | ({"saved_by": saved_by} if isinstance(saved_by, dict) else {})
        )
        return state

    def blocks(self, total: int, done: int = 0, *, first: int = 1) -> Iterator[int]:
        """Sizes of the blocks of the ``total - done`` units left: one block when nobody
        reports progress or checkpoints, else blocks of about ``progress.BLOCK_S``."""
        left = total - done
        if left <= 0:
            return
        if not (self.enabled or progress.reporting()):
            yield left
            return
        size = max(1, first)
        while done < total:
            n = min(size, total - done)
            t0 = time.perf_counter()
            yield n
            elapsed = time.perf_counter() - t0
            done += n
            progress.report(done / total)
            rate = n / elapsed if elapsed > 0 else float("inf")
            size = max(1, min(int(rate * progress.BLOCK_S), n * progress.GROWTH))

    def due(self) -> bool:
        return self.enabled and (
            _release_requested or time.monotonic() - self.last >= self.interval_s
        )

    def after_block(self, step: int, total: int, state: Callable[[], State]) -> None:
        """After a block: a checkpoint if one is due (``state`` makes it), and ``Released``
        once it is written if the worker asked for a release. Nothing after the last block."""
        if step >= total or not self.due():
            return
        t0 = time.perf_counter()
        size = write(
            self.path,
            state(),
            kernel=self.kernel,
            device=self.device,
            max_bytes=self.max_bytes,
            saved_by=self.saved_by,
        )
        self.last = time.monotonic()
        if size is None:
            self.interval_s = 0  # larger than allowed: no more tries in this attempt
            self._event({"event": "too_large", "step": step, "max_bytes": self.max_bytes})
            return
        self.saved += 1
        seconds = time.perf_counter() - t0
        self._event({"event": "saved", "step": step, "bytes": size, "seconds": seconds})
        if _release_requested:
            raise Released(step)

    def _event(self, body: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event({"type": "checkpoint", **body})


_current = Checkpointer(None, 0)
_release_requested = False


def current(kernel: str, device: str = "cpu", *, portable: bool = True) -> Checkpointer:
    """The running job's checkpoints, for ``kernel`` on ``device``."""
    return _current.for_kernel(kernel, device, portable=portable)


@contextlib.contextmanager
def session(
    spec: Mapping[str, Any] | None, on_event: Event | None = None
) -> Iterator[Checkpointer]:
    """The job's checkpoints inside the block: ``spec`` is the request's ``checkpoint``
    (``{"folder", "interval_s", "max_bytes", "attempt", "worker"}``), None for none."""
    global _current, _release_requested
    if spec:
        saved_by = {k: spec[k] for k in ("attempt", "worker") if spec.get(k) is not None}
        ck = Checkpointer(
            Path(spec["folder"]),
            float(spec.get("interval_s", 0)),
            max_bytes=int(spec.get("max_bytes") or DEFAULT_MAX_BYTES),
            on_event=on_event,
            saved_by=saved_by or None,
        )
    else:
        ck = Checkpointer(None, 0)
    previous, _current = _current, ck
    _release_requested = False
    try:
        yield ck
    finally:
        _current = previous
        _release_requested = False


def request_release(*_: Any) -> None:
    """The signal handler of ``RELEASE_SIGNAL``: checkpoint after this block and stop."""
    global _release_requested
    _release_requested = True


def install_release_handler() -> None:
    signal.signal(RELEASE_SIGNAL, request_release)
