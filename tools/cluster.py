"""Run the Stratus services as local processes under supervisord (the no-Docker deployment).

Command line (``make up`` / ``make down`` use it)::

    python -m tools.cluster up [--workers N] [--gateway-port P ...]   # servers, db, vhost, start
    python -m tools.cluster status
    python -m tools.cluster down        # only the supervisord of run/, never the servers

Library (tests)::

    prepare_database("stratus_t1"); prepare_vhost("stratus_t1")
    env = {"STRATUS_POSTGRES__DATABASE": "stratus_t1", "STRATUS_RABBIT__VHOST": "stratus_t1"}
    with LocalCluster(ClusterConfig(run_dir=tmp_path, env=env, workers=2)) as cluster:
        cluster.signal(cluster.worker(1), signal.SIGKILL)   # supervisord restarts it

Every service is one supervisord program; the workers are one program ``worker`` with
``numprocs`` (processes ``worker_00``, ``worker_01`` ... on ``worker_base_port + n``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tools.provision import (
    REPO_ROOT,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)
from tools.supervision import (
    MARKER_VAR,
    PROGRAM_OPTIONS,
    ProcessStatus,
    Supervisor,
    alive,
    env_value,
    esc,
    http_status,
    is_marked,
    kill_all,
    marked_pids,
    marker_for,
    numbered_command,
    port_in_use,
    python_command,
    section,
    socket_path,
    tail,
    wait_gone,
)

__all__ = [
    "SERVICES",
    "ClusterConfig",
    "ClusterError",
    "LocalCluster",
    "ProcessStatus",
    "drop_database",
    "drop_vhost",
    "main",
    "prepare_database",
    "prepare_vhost",
]

WORKER = "worker"
SERVICES = ("gateway", "scheduler", "datamover", "tenant", WORKER)
RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"


class ClusterError(RuntimeError):
    """The local cluster could not be started, addressed or stopped."""


@dataclass
class ClusterConfig:
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # STRATUS_* for every service
    gateway_port: int = 8000
    scheduler_port: int = 8001
    datamover_port: int = 8003
    tenant_port: int = 8004
    worker_base_port: int = 8100
    workers: int = 1
    worker_env: dict[str, str] = field(default_factory=dict)  # extra env, workers only
    python: str = sys.executable


class LocalCluster:
    """The services of one ``ClusterConfig`` under one supervisord rooted in ``run_dir``.

    ``program`` arguments name a service (``gateway`` ...), all workers (``worker``) or one
    worker process (``worker_01``, see ``worker(i)``).
    """

    def __init__(self, cfg: ClusterConfig) -> None:
        if cfg.workers < 1:
            raise ValueError("workers must be at least 1")
        self.cfg = cfg
        self.run_dir = cfg.run_dir.resolve()
        self.log_dir = self.run_dir / "logs"
        self.config_path = self.run_dir / "supervisord.conf"
        self.pidfile = self.run_dir / "supervisord.pid"
        self.socket = socket_path(self.run_dir)
        self.marker = marker_for(self.run_dir)

    # --- naming ----------------------------------------------------------------------------
    def worker(self, index: int) -> str:
        if not 0 <= index < self.cfg.workers:
            raise ValueError(f"worker index {index} out of range (workers={self.cfg.workers})")
        return f"{WORKER}_{index:02d}"

    def worker_names(self) -> list[str]:
        return [self.worker(i) for i in range(self.cfg.workers)]

    def process_names(self) -> list[str]:
        return [s for s in SERVICES if s != WORKER] + self.worker_names()

    def members(self, program: str) -> list[str]:
        """The process names ``program`` stands for."""
        if program == WORKER:
            return self.worker_names()
        if program in self.process_names():
            return [program]
        raise ClusterError(
            f"unknown program {program!r}: one of {[*SERVICES, *self.worker_names()]}"
        )

    def port(self, process: str) -> int:
        if process.startswith(f"{WORKER}_"):
            return self.cfg.worker_base_port + int(process.removeprefix(f"{WORKER}_"))
        ports = {
            "gateway": self.cfg.gateway_port,
            "scheduler": self.cfg.scheduler_port,
            "datamover": self.cfg.datamover_port,
            "tenant": self.cfg.tenant_port,
        }
        if process not in ports:
            raise ClusterError(f"unknown process {process!r}")
        return ports[process]

    def url(self, program: str) -> str:
        """``http://127.0.0.1:PORT`` of a service (``worker`` means ``worker_00``)."""
        return f"http://127.0.0.1:{self.port(self.members(program)[0])}"

    def log_path(self, process: str) -> Path:
        return self.log_dir / f"{process}.log"

    @staticmethod
    def namespec(process: str) -> str:
        group = WORKER if process.startswith(f"{WORKER}_") else process
        return f"{group}:{process}"

    # --- configuration ---------------------------------------------------------------------
    def _service_env(self) -> dict[str, str]:
        return {"PYTHONUNBUFFERED": "1", **self.cfg.env}

    def _supervisord_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
        env[MARKER_VAR] = self.marker
        return env

    def _program(self, name: str) -> str:
        env = self._service_env() | {"STRATUS_PORT": str(self.port(name))}
        options = {
            "command": python_command(self.cfg.python, f"services.{name}"),
            "directory": esc(str(REPO_ROOT)),
            "environment": env_value(env),
            "stdout_logfile": esc(str(self.log_path(name))),
            **PROGRAM_OPTIONS,
        }
        return section(f"program:{name}", options)

    def _worker_program(self) -> str:
        env = self._service_env() | self.cfg.worker_env
        command = numbered_command(
            self.cfg.python,
            "services.worker",
            base_port=self.cfg.worker_base_port,
            name_prefix=env.pop("STRATUS_NAME", f"{os.uname().nodename}-{WORKER}"),
        )
        options = {
            "command": command,
            "process_name": "%(program_name)s_%(process_num)02d",
            "numprocs": str(self.cfg.workers),
            "directory": esc(str(REPO_ROOT)),
            "environment": env_value(env),
            "stdout_logfile": esc(str(self.log_dir)) + "/%(program_name)s_%(process_num)02d.log",
            **PROGRAM_OPTIONS,
        }
        return section(f"program:{WORKER}", options)

    def write_config(self) -> Path:
        """Write ``run_dir/supervisord.conf`` (mode 600: it holds the secrets) and return it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sock = esc(str(self.socket))
        text = (
            section("unix_http_server", {"file": sock, "chmod": "0700"})
            + section(
                "supervisord",
                {
                    "logfile": esc(str(self.log_dir / "supervisord.log")),
                    "logfile_maxbytes": "10MB",
                    "logfile_backups": "2",
                    "pidfile": esc(str(self.pidfile)),
                    "childlogdir": esc(str(self.log_dir)),
                    "directory": esc(str(REPO_ROOT)),
                    "identifier": f"stratus-{self.marker}",
                    "nodaemon": "false",
                },
            )
            + section("rpcinterface:supervisor", {"supervisor.rpcinterface_factory": RPC_FACTORY})
            + section("supervisorctl", {"serverurl": f"unix://{sock}"})
            + "".join(self._program(s) for s in SERVICES if s != WORKER)
            + self._worker_program()
        )
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(self.config_path, 0o600)
        return self.config_path

    # --- lifecycle -------------------------------------------------------------------------
    def supervisord_pid(self) -> int | None:
        """The pid of this cluster's supervisord, when it runs."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and is_marked(pid, self.marker) else None

    def running(self) -> bool:
        return self.supervisord_pid() is not None

    def _busy_ports(self) -> list[str]:
        host = self.cfg.env.get("STRATUS_HOST", "127.0.0.1")
        return [
            f"{name} :{self.port(name)}"
            for name in self.process_names()
            if port_in_use(host, self.port(name))
        ]

    def _launch(self, conf: Path) -> None:
        out = self.log_dir / "supervisord.out"
        with out.open("ab") as fh:
            proc = subprocess.run(
                [self.cfg.python, "-m", "supervisor.supervisord", "-c", str(conf)],
                cwd=REPO_ROOT,
                env=self._supervisord_env(),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
        if proc.returncode != 0:
            raise ClusterError(f"supervisord failed to start:\n{tail(out)}")

    def start(self, timeout: float = 90) -> None:
        """Start supervisord (daemonised) and wait until every service's /readyz is 200."""
        if self.running():
            raise ClusterError(f"a cluster already runs from {self.run_dir}; stop it first")
        busy = self._busy_ports()
        if busy:
            raise ClusterError(f"ports already in use by another process: {', '.join(busy)}")
        self._launch(self.write_config())
        try:
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _rpc(self, timeout: float = 60.0) -> Supervisor:
        return Supervisor(self.socket, timeout=timeout)

    def _states(self) -> dict[str, str]:
        try:
            return {p.name: p.state for p in self._rpc(timeout=5).processes()}
        except (OSError, xmlrpc.client.Error, ValueError):
            return {}

    def _not_ready(self, name: str, why: str) -> ClusterError:
        log = self.log_path(name)
        message = f"{name} not ready ({why}); last lines of {log}:\n{tail(log)}"
        print(message, file=sys.stderr)
        return ClusterError(message)

    def wait_ready(self, program: str | None = None, timeout: float = 90) -> None:
        """Wait until each process of ``program`` (default: all) is RUNNING with /readyz 200."""
        pending = self.members(program) if program else self.process_names()
        started = time.monotonic()
        while pending:
            states = self._states()
            if not states and time.monotonic() - started > 10 and not self.running():
                raise ClusterError(
                    f"supervisord is not running; see {self.log_dir / 'supervisord.log'}:\n"
                    + tail(self.log_dir / "supervisord.log")
                )
            for name in list(pending):
                state = states.get(name, "UNKNOWN")
                if state == "FATAL":
                    raise self._not_ready(name, "FATAL: it kept exiting")
                if state == "RUNNING" and http_status(self.port(name), "/readyz") == 200:
                    pending.remove(name)
            if pending and time.monotonic() - started > timeout:
                state = states.get(pending[0], "UNKNOWN")
                why = f"no /readyz 200 within {timeout:.0f}s, now {state}"
                if len(pending) > 1:
                    why += f"; also not ready: {', '.join(pending[1:])}"
                raise self._not_ready(pending[0], why)
            if pending:
                time.sleep(0.5)

    def stop(self, timeout: float = 60) -> None:
        """Shut supervisord down (it stops every service), then kill any leftover process.

        Idempotent; only processes started by this cluster's supervisord are touched.
        """
        pid = self.supervisord_pid()
        if pid is not None:
            try:
                self._rpc(timeout=10).shutdown()
            except (OSError, xmlrpc.client.Error):
                kill_all([pid], grace=timeout)
            if not wait_gone([pid], timeout):
                kill_all([pid], grace=5)
        leftovers = marked_pids(self.marker)
        if leftovers:
            kill_all(leftovers)
        self.socket.unlink(missing_ok=True)
        if self.supervisord_pid() is None:
            self.pidfile.unlink(missing_ok=True)

    def status(self) -> list[ProcessStatus]:
        if not self.running():
            raise ClusterError(f"no cluster runs from {self.run_dir}")
        return self._rpc().processes()

    def pids(self, program: str) -> list[int]:
        names = set(self.members(program))
        return [p.pid for p in self.status() if p.name in names and p.pid > 0]

    def signal(self, program: str, sig: int) -> None:
        """Send ``sig`` to the process(es) of ``program`` (supervisord restarts what dies)."""
        pids = self.pids(program)
        if not pids:
            raise ClusterError(f"{program} has no running process")
        for pid in pids:
            os.kill(pid, sig)

    def restart(self, program: str, timeout: float = 90) -> None:
        """Stop then start the process(es) of ``program`` and wait until they are ready."""
        rpc = self._rpc(timeout=max(60.0, timeout))
        names = self.members(program)
        for name in names:
            rpc.stop(self.namespec(name))
        for name in names:
            rpc.start(self.namespec(name))
        self.wait_ready(program, timeout=timeout)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.cluster up|down|status|env`` (the command line is in ``cluster_cli``)."""
    from tools.cluster_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
