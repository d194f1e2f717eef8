"""supervisord plumbing for ``tools.cluster``: config text, XML-RPC client, process helpers."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shlex
import signal
import socket
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

MARKER_VAR = "STRATUS_LOCALCLUSTER_ID"
"""Set for supervisord and inherited by every process it starts (and their children), so
``stop()`` can find leftovers of this cluster, and only of this cluster, in ``/proc``."""

MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS

# Options every program gets: compose-like restart policy and group-wide stop/kill.
PROGRAM_OPTIONS: dict[str, str] = {
    "autostart": "true",
    "autorestart": "true",
    "startsecs": "1",
    "startretries": "10",
    "stopsignal": "TERM",
    "stopwaitsecs": "30",
    "stopasgroup": "true",
    "killasgroup": "true",
    "redirect_stderr": "true",
    "stdout_logfile_maxbytes": "50MB",
    "stdout_logfile_backups": "3",
}


def marker_for(run_dir: Path) -> str:
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def socket_path(run_dir: Path) -> Path:
    """``run_dir/supervisor.sock``, or a short path in the temp dir when that is too long."""
    path = run_dir.resolve() / "supervisor.sock"
    if len(str(path).encode()) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.gettempdir()) / f"stratus-{marker_for(run_dir)}.sock"


def esc(value: str) -> str:
    """Escape a literal for a supervisord value (``%`` starts an expansion there)."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"newline in supervisord value {value!r}")
    return value.replace("%", "%%")


def _quote_env(key: str, value: str) -> str:
    # supervisord splits environment= with a non-POSIX shlex: quotes stay in the token and
    # are stripped from both ends, and there are no escapes.
    quote = '"' if '"' not in value else "'"
    if quote in value or (value and (value[0] in "'\"" or value[-1] in "'\"")):
        raise ValueError(f"supervisord cannot carry the quotes in {key}={value!r}")
    return f"{key}={quote}{value}{quote}"


def env_value(env: Mapping[str, str]) -> str:
    """``KEY="value",...`` for supervisord's ``environment=``."""
    return ",".join(_quote_env(key, esc(value)) for key, value in env.items())


def section(name: str, options: Mapping[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items()) + "\n"


def python_command(python: str, module: str) -> str:
    return esc(f"{shlex.quote(python)} -m {module}")


def numbered_command(python: str, module: str, *, base_port: int, name_prefix: str) -> str:
    """A command for one of ``numprocs`` processes: ``exec python -m module`` with
    ``STRATUS_PORT = base_port + process_num`` and ``STRATUS_NAME = prefix-NN-PID`` (unique per
    process, ending in its pid like the services' default name)."""
    name = f"{shlex.quote(esc(name_prefix))}-%(process_num)02d-$$"
    inner = (
        f"export STRATUS_PORT=$(({base_port} + %(process_num)d)) STRATUS_NAME={name}; "
        f"exec {esc(shlex.quote(python))} -m {module}"
    )
    return f"/bin/sh -c {shlex.quote(inner)}"


@dataclass(frozen=True)
class ProcessStatus:
    name: str  # process name: gateway, worker_00 ...
    group: str  # supervisord program / group: gateway, worker ...
    state: str  # RUNNING, STARTING, BACKOFF, FATAL, EXITED, STOPPED ...
    pid: int  # 0 when not running
    description: str

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: object) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


class Supervisor:
    """The few supervisord XML-RPC calls the cluster needs, over its unix socket."""

    def __init__(self, sock: Path, *, timeout: float = 60.0) -> None:
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=_UnixTransport(str(sock), timeout), allow_none=True
        )

    def _call(self, method: str, *args: Any) -> Any:
        return getattr(self._proxy, f"supervisor.{method}")(*args)

    def state(self) -> str:
        return str(self._call("getState")["statename"])

    def processes(self) -> list[ProcessStatus]:
        infos = cast(list[dict[str, Any]], self._call("getAllProcessInfo"))
        return [
            ProcessStatus(
                name=str(i["name"]),
                group=str(i["group"]),
                state=str(i["statename"]),
                pid=int(i["pid"]),
                description=str(i["description"]),
            )
            for i in infos
        ]

    def start(self, namespec: str) -> None:
        self._ignore_fault(60, "startProcess", namespec, True)  # 60: ALREADY_STARTED

    def stop(self, namespec: str) -> None:
        self._ignore_fault(70, "stopProcess", namespec, True)  # 70: NOT_RUNNING

    def shutdown(self) -> None:
        self._call("shutdown")

    def _ignore_fault(self, code: int, method: str, *args: Any) -> None:
        try:
            self._call(method, *args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != code:
                raise


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it is not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if alive(pid)}
        if pending:
            time.sleep(0.1)
    return not pending


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``MARKER_VAR=marker`` (Linux ``/proc`` only)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def is_marked(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return alive(pid) and not Path("/proc").is_dir()
    return f"{MARKER_VAR}={marker}".encode() in environ.split(b"\0")


def kill_all(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    targets = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_gone(targets, grace):
            return


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (so a service could not bind it)."""
    bind_host = "127.0.0.1" if host in ("", "localhost") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return True
    return False


def http_status(port: int, path: str, *, timeout: float = 2.0) -> int | None:
    """The status of ``GET http://127.0.0.1:port/path``, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Running:
    """``with x:`` starts ``x`` (``start``) and stops it (``stop``) however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
