"""A pool process: ``python -m services.worker.child``, started by ``runner.PoolProcess``.

It reads its configuration from the environment the worker gives it (numba's cache folder
and thread count are set there, before numba is imported), dies with the worker
(``PR_SET_PDEATHSIG``) but ignores SIGTERM and SIGINT, warms every kernel, says ``ready``,
then runs one job at a time: a request frame on stdin, a result frame on the original
stdout. Anything a kernel prints goes to stderr (the worker's log), never into the frames.
A batch request (an array chunk's elements) runs its items one after another, one reply frame
each, and stops early on a ``stop`` frame (``serve_batch``).

Memory: once warm, the process limits its private writable memory (``RLIMIT_DATA``: what
``malloc``, NumPy and numba allocate; not the read-only memory maps of inputs, the shared
maps of outputs, nor address space reserved for threads, which ``RLIMIT_AS`` would count)
to what it holds now plus the job's allowance (``STRATUS_POOL_JOB_MEMORY_BYTES``). A kernel
that needs more gets a ``MemoryError`` (inside a numba parallel loop, a ``SystemError``
caused by one): the job fails, not retried (the same input needs the same memory), and the
process exits so that the worker replaces it.

Results: a result whose JSON is larger than ``STRATUS_POOL_RESULT_INLINE_MAX_BYTES`` is
written to the request's ``result_path`` (atomically, as outputs are) and the reply names
the file instead (``result_file``), so the worker never holds a large result in memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import select
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from services.worker import checkpoint, progress
from services.worker.protocol import read_frame, temp_path, write_frame

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stdin EOF still ends the loop
        return
    if os.getppid() != int(os.environ.get("STRATUS_POOL_PARENT", os.getppid())):
        os._exit(1)  # the worker died before the prctl


def data_bytes() -> int:
    """This process's private writable memory now (``VmData``: what ``RLIMIT_DATA`` limits)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = [line.split()[1] for line in status.splitlines() if line.startswith("VmData:")]
    return int(found[0]) * 1024 if found else 0


def limit_memory(job_bytes: int) -> None:
    """Let the jobs of this process allocate ``job_bytes`` beyond what it holds now."""
    if job_bytes > 0:
        limit = data_bytes() + job_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def memory_error(job_bytes: int) -> str:
    if job_bytes > 0:
        return f"memory limit exceeded: the job needed more than {job_bytes / 2**20:.0f} MiB"
    return "out of memory: the job needed more memory than the machine had free"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a failed allocation."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # a chain set by hand may loop
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(
        isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM)
        for e in chain
    )


def write_result(path: str, body: bytes) -> dict[str, Any]:
    """``body`` as the file ``path``, renamed into place once whole."""
    from shared.storage.checksum import checksum_of

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": path, "size": len(body), "checksum": checksum_of(body)}


def done(result: Any, request: dict[str, Any], inline_max: int) -> dict[str, Any]:
    """The reply of a job that succeeded: its result inline, or in the file the worker gave."""
    body = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    path = request.get("result_path")
    if inline_max <= 0 or len(body) <= inline_max or not path:
        return {"type": "done", "result": orjson.Fragment(body)}
    return {"type": "done", "result_file": write_result(path, body)}


def handle(
    request: dict[str, Any], threads: int, *, job_bytes: int = 0, inline_max: int = 0
) -> dict[str, Any]:
    from services.worker.kernels import registry
    from services.worker.kernels.base import KernelInputError

    cpu0, wall0 = time.process_time(), time.perf_counter()
    reply: dict[str, Any]
    try:
        result = registry.call(
            request["kernel"],
            request["device"],
            request["params"],
            request["inputs"],
            request["outputs"],
            threads,
        )
        reply = done(result, request, inline_max)
    except checkpoint.Released as exc:  # the worker's drain: checkpointed, handed back
        reply = {"type": "released", "step": exc.step}
    except (KernelInputError, registry.KernelUnavailable) as exc:
        reply = {"type": "failed", "error": str(exc), "retryable": False}
    except orjson.JSONEncodeError as exc:
        error = f"the kernel's result is not JSON: {exc}"
        reply = {"type": "failed", "error": error, "retryable": False}
    except Exception as exc:
        reply = failure(exc, job_bytes)
    reply["cpu_total"] = time.process_time()  # the process' own, so far: see runner.run
    reply["cpu_seconds"] = reply["cpu_total"] - cpu0
    reply["wall_seconds"] = time.perf_counter() - wall0
    return reply


def failure(exc: Exception, job_bytes: int) -> dict[str, Any]:
    if out_of_memory(exc):  # the process is not trusted after it: the worker replaces it
        return {
            "type": "failed",
            "error": memory_error(job_bytes),
            "retryable": False,
            "fatal": True,
        }
    if isinstance(exc, OSError):  # disk full, storage away: not the job's fault
        return {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "retryable": True}
    return {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "retryable": False}


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    threads = int(os.environ.get("STRATUS_POOL_THREADS", "1"))
    device = os.environ.get("STRATUS_POOL_DEVICE", "cpu")
    job_bytes = int(os.environ.get("STRATUS_POOL_JOB_MEMORY_BYTES", "0"))
    inline_max = int(os.environ.get("STRATUS_POOL_RESULT_INLINE_MAX_BYTES", "0"))
    t0 = time.perf_counter()
    from services.worker.kernels import registry

    if os.environ.get("STRATUS_POOL_WARM", "1") == "1":
        registry.warm_all(device)
    limit_memory(job_bytes)  # after the imports and the warm-up: the job's share is its own
    ready = {
        "devices": registry.devices(),
        "warm_s": time.perf_counter() - t0,
        "cpu_total": time.process_time(),
    }
    write_frame(out, {"type": "ready", "pid": os.getpid(), **ready})
    while (request := read_frame(inp)) is not None:
        if request.get("type") == "stop":  # reached us after its batch had ended
            continue
        if request.get("type") == "batch":
            if serve_batch(request, inp, out, threads, job_bytes=job_bytes, inline_max=inline_max):
                return  # an item ran out of memory: see below
            continue
        with (
            progress.sink(progress.frames(out, write_frame)),  # progress frames first
            checkpoint.session(request.get("checkpoint"), partial(write_frame, out)) as ck,
        ):
            reply = handle(request, threads, job_bytes=job_bytes, inline_max=inline_max)
        reply["checkpoints"], reply["resumed_from"] = ck.saved, ck.resumed_from
        write_frame(out, reply)
        if reply.get("fatal"):
            return  # after MemoryError the process is not trusted: the worker replaces it


def stop_requested(inp: BinaryIO) -> bool:
    """Whether the worker has sent a ``stop`` frame (looks without waiting; ``inp`` is the
    unbuffered pipe, so a frame that arrived is always seen by ``select``)."""
    while select.select([inp], [], [], 0)[0]:
        message = read_frame(inp)
        if message is None or message.get("type") == "stop":
            return True  # the worker closed the pipe: stop as well
    return False


def serve_batch(
    batch: dict[str, Any],
    inp: BinaryIO,
    out: BinaryIO,
    threads: int,
    *,
    job_bytes: int = 0,
    inline_max: int = 0,
) -> bool:
    """Run the items of ``batch`` one after another with the warm kernel, one reply frame
    each (its ``index`` added), then ``batch_done``; stop early on a ``stop`` frame. An
    item's result comes back inline (a chunked element has no result file): one larger than
    ``inline_max`` fails the item retryably (``too_large``), so that it runs again as a job
    of its own, whose result can be a file. True when an item ran out of memory: its frame
    is the last, the process exits after it."""
    base = {
        "kernel": batch["kernel"],
        "device": batch["device"],
        "inputs": {},
        "outputs": {},
        "result_path": None,
    }
    for item in batch["items"]:
        if stop_requested(inp):
            break
        reply = too_large(
            handle({**base, "params": item["params"]}, threads, job_bytes=job_bytes), inline_max
        )
        reply["index"] = item["index"]
        write_frame(out, reply)
        if reply.get("fatal"):
            return True
    write_frame(out, {"type": "batch_done"})
    return False


def too_large(reply: dict[str, Any], inline_max: int) -> dict[str, Any]:
    """``reply``, or a retryable failure in its place when its result is over ``inline_max``
    bytes."""
    if inline_max <= 0 or reply.get("type") != "done":
        return reply
    size = len(orjson.dumps(reply["result"]))
    if size <= inline_max:
        return reply
    error = (
        f"the result ({size} bytes) is larger than the {inline_max} bytes an array element "
        "run in a chunk returns inline; a retry runs it as a job of its own, whose result "
        "may be larger"
    )
    usage = {k: reply[k] for k in ("cpu_total", "cpu_seconds", "wall_seconds")}
    return {"type": "failed", "error": error, "retryable": True, **usage}


def main() -> None:
    # the worker stops its pool (stdin closed, or SIGKILL); a SIGTERM or Ctrl-C sent to the
    # whole process group (supervisord's stopasgroup) must not kill the jobs it lets finish
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    checkpoint.install_release_handler()  # the worker's drain: checkpoint and stop
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() in a kernel goes to stderr, not into the frames
    # unbuffered: a batch looks for a stop frame with ``select``, which a buffer would hide
    serve(os.fdopen(0, "rb", buffering=0, closefd=False), out)


if __name__ == "__main__":
    main()
