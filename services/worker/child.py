"""A pool process: ``python -m services.worker.child``, started by ``runner.PoolProcess``.

It reads its configuration from the environment the worker gives it (numba's cache folder
and thread count are set there, before numba is imported), dies with the worker
(``PR_SET_PDEATHSIG``) but ignores SIGTERM and SIGINT, warms every kernel, says ``ready``,
then runs one job at a time: a request frame on stdin, a result frame on the original
stdout. Anything a kernel prints goes to stderr (the worker's log), never into the frames.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time
from typing import Any, BinaryIO

from services.worker.protocol import read_frame, write_frame

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stdin EOF still ends the loop
        return
    if os.getppid() != int(os.environ.get("STRATUS_POOL_PARENT", os.getppid())):
        os._exit(1)  # the worker died before the prctl


def _limit_memory() -> None:
    limit = int(os.environ.get("STRATUS_POOL_MEMORY_LIMIT_MB", "0"))
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit * 2**20, limit * 2**20))


def handle(request: dict[str, Any], threads: int) -> dict[str, Any]:
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
        reply = {"type": "done", "result": result}
    except (KernelInputError, registry.KernelUnavailable) as exc:
        reply = {"type": "failed", "error": str(exc), "retryable": False}
    except MemoryError:
        reply = {"type": "failed", "error": "out of memory", "retryable": True, "fatal": True}
    except OSError as exc:  # disk full, storage away: not the job's fault
        reply = {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "retryable": True}
    except Exception as exc:
        reply = {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "retryable": False}
    reply["cpu_total"] = time.process_time()  # the process' own, so far: see runner.run
    reply["cpu_seconds"] = reply["cpu_total"] - cpu0
    reply["wall_seconds"] = time.perf_counter() - wall0
    return reply


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    threads = int(os.environ.get("STRATUS_POOL_THREADS", "1"))
    device = os.environ.get("STRATUS_POOL_DEVICE", "cpu")
    t0 = time.perf_counter()
    from services.worker.kernels import registry

    if os.environ.get("STRATUS_POOL_WARM", "1") == "1":
        registry.warm_all(device)
    ready = {
        "devices": registry.devices(),
        "warm_s": time.perf_counter() - t0,
        "cpu_total": time.process_time(),
    }
    write_frame(out, {"type": "ready", "pid": os.getpid(), **ready})
    while (request := read_frame(inp)) is not None:
        reply = handle(request, threads)
        try:
            write_frame(out, reply)
        except TypeError as exc:  # orjson.JSONEncodeError: a result that is not JSON
            error = f"the kernel's result is not JSON: {exc}"
            write_frame(out, {**reply, "type": "failed", "error": error, "retryable": False})
        if reply.get("fatal"):
            return  # after MemoryError the process is not trusted: the worker replaces it


def main() -> None:
    # the worker stops its pool (stdin closed, or SIGKILL); a SIGTERM or Ctrl-C sent to the
    # whole process group (supervisord's stopasgroup) must not kill the jobs it lets finish
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _limit_memory()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() in a kernel goes to stderr, not into the frames
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
