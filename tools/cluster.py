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

With ``autoscale=Autoscale(min_workers, max_workers)`` (what ``make up`` uses) the worker
program has ``numprocs = max_workers`` and ``autostart=false``: the scheduler's autoscaler
(``local`` backend) starts and stops them over this supervisord's socket, and supervisord
still restarts one that crashes. ``cuda_max_workers > 0`` adds a program ``cuda_worker``
(``STRATUS_DEVICE=cuda``, ports from ``worker_base_port + 50``) for the cuda pool.
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
    "CUDA_WORKER",
    "SERVICES",
    "Autoscale",
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
CUDA_WORKER = "cuda_worker"
CUDA_PORT_OFFSET = 50
SERVICES = ("gateway", "scheduler", "datamover", WORKER)
RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"


class ClusterError(RuntimeError):
    """The local cluster could not be started, addressed or stopped."""


@dataclass
class Autoscale:
    """Worker pools sized by the scheduler's autoscaler (``STRATUS_AUTOSCALE__*``)."""

    min_workers: int = 1
    max_workers: int = 4
    cuda_min_workers: int = 0
    cuda_max_workers: int = 0
    cuda_env: dict[str, str] = field(default_factory=dict)  # e.g. STRATUS_CUDA_SIMULATOR


@dataclass
class ClusterConfig:
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # STRATUS_* for every service
    gateway_port: int = 8000
    scheduler_port: int = 8001
    datamover_port: int = 8003
    worker_base_port: int = 8100
    workers: int = 1
    worker_env: dict[str, str] = field(default_factory=dict)  # extra env, workers only
    python: str = sys.executable
    autoscale: Autoscale | None = None  # None: ``workers`` fixed worker processes

    @property
    def worker_processes(self) -> int:
        return self.autoscale.max_workers if self.autoscale else self.workers

    @property
    def cuda_processes(self) -> int:
        return self.autoscale.cuda_max_workers if self.autoscale else 0


class LocalCluster:
    """The services of one ``ClusterConfig`` under one supervisord rooted in ``run_dir``.

    ``program`` arguments name a service (``gateway`` ...), all workers (``worker``) or one
    worker process (``worker_01``, see ``worker(i)``).
    """

    def __init__(self, cfg: ClusterConfig) -> None:
        if cfg.worker_processes < 1:
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
        if not 0 <= index < self.cfg.worker_processes:
            raise ValueError(
                f"worker index {index} out of range (workers={self.cfg.worker_processes})"
            )
        return f"{WORKER}_{index:02d}"

    def worker_names(self) -> list[str]:
        return [self.worker(i) for i in range(self.cfg.worker_processes)]

    def cuda_worker_names(self) -> list[str]:
        return [f"{CUDA_WORKER}_{i:02d}" for i in range(self.cfg.cuda_processes)]

    def process_names(self) -> list[str]:
        services = [s for s in SERVICES if s != WORKER]
        return services + self.worker_names() + self.cuda_worker_names()

    def startup_names(self) -> list[str]:
        """The processes that run from the start (autoscaled workers are the scheduler's)."""
        if self.cfg.autoscale:
            return [s for s in SERVICES if s != WORKER]
        return self.process_names()

    def members(self, program: str) -> list[str]:
        """The process names ``program`` stands for."""
        if program == WORKER:
            return self.worker_names()
        if program == CUDA_WORKER:
            return self.cuda_worker_names()
        if program in self.process_names():
            return [program]
        raise ClusterError(
            f"unknown program {program!r}: one of {[*SERVICES, *self.worker_names()]}"
        )

    def port(self, process: str) -> int:
        if process.startswith(f"{CUDA_WORKER}_"):
            number = int(process.removeprefix(f"{CUDA_WORKER}_"))
            return self.cfg.worker_base_port + CUDA_PORT_OFFSET + number
        if process.startswith(f"{WORKER}_"):
            return self.cfg.worker_base_port + int(process.removeprefix(f"{WORKER}_"))
        ports = {
            "gateway": self.cfg.gateway_port,
            "scheduler": self.cfg.scheduler_port,
            "datamover": self.cfg.datamover_port,
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
        group = process
        for program in (CUDA_WORKER, WORKER):
            if process.startswith(f"{program}_"):
                group = program
                break
        return f"{group}:{process}"

    # --- configuration ---------------------------------------------------------------------
    def _service_env(self) -> dict[str, str]:
        return {"PYTHONUNBUFFERED": "1", **self.cfg.env}

    def _supervisord_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
        env[MARKER_VAR] = self.marker
        return env

    def _autoscale_env(self) -> dict[str, str]:
        """The scheduler's autoscaler settings: the ``local`` backend on this supervisord."""
        a = self.cfg.autoscale
        if a is None:
            return {}
        return {
            "STRATUS_AUTOSCALE__ENABLED": "true",
            "STRATUS_AUTOSCALE__BACKEND": "local",
            "STRATUS_AUTOSCALE__LOCAL__SUPERVISOR_SOCKET": str(self.socket),
            "STRATUS_AUTOSCALE__LOCAL__CPU_PROGRAM": WORKER,
            "STRATUS_AUTOSCALE__LOCAL__CUDA_PROGRAM": CUDA_WORKER,
            "STRATUS_AUTOSCALE__CPU__MIN_WORKERS": str(a.min_workers),
            "STRATUS_AUTOSCALE__CPU__MAX_WORKERS": str(a.max_workers),
            "STRATUS_AUTOSCALE__CUDA__MIN_WORKERS": str(a.cuda_min_workers),
            "STRATUS_AUTOSCALE__CUDA__MAX_WORKERS": str(a.cuda_max_workers),
        }

    def _program(self, name: str) -> str:
        env = self._service_env() | {"STRATUS_PORT": str(self.port(name))}
        if name == "scheduler":
            env = self._autoscale_env() | env  # settings given in ``env`` win
        options = {
            "command": python_command(self.cfg.python, f"services.{name}"),
            "directory": esc(str(REPO_ROOT)),
            "environment": env_value(env),
            "stdout_logfile": esc(str(self.log_path(name))),
            **PROGRAM_OPTIONS,
        }
        return section(f"program:{name}", options)

    def _worker_program(self, program: str = WORKER) -> str:
        env = self._service_env() | self.cfg.worker_env
        base_port, numprocs = self.cfg.worker_base_port, self.cfg.worker_processes
        if program == CUDA_WORKER:
            env |= {"STRATUS_DEVICE": "cuda"}
            env |= self.cfg.autoscale.cuda_env if self.cfg.autoscale else {}
            base_port, numprocs = base_port + CUDA_PORT_OFFSET, self.cfg.cuda_processes
        command = numbered_command(
            self.cfg.python,
            "services.worker",
            base_port=base_port,
            name_prefix=env.pop("STRATUS_NAME", f"{os.uname().nodename}-{program}"),
        )
        options = {
            "command": command,
            "process_name": "%(program_name)s_%(process_num)02d",
            "numprocs": str(numprocs),
            "directory": esc(str(REPO_ROOT)),
            "environment": env_value(env),
            "stdout_logfile": esc(str(self.log_dir)) + "/%(program_name)s_%(process_num)02d.log",
            **PROGRAM_OPTIONS,
        }
        if self.cfg.autoscale:
            options["autostart"] = "false"  # the autoscaler starts and stops them
        return section(f"program:{program}", options)

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
            + (self._worker_program(CUDA_WORKER) if self.cfg.cuda_processes else "")
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
            if self.cfg.autoscale and self.cfg.autoscale.min_workers:
                self.wait_workers(self.cfg.autoscale.min_workers, timeout=timeout)
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
        """Wait until each process of ``program`` (default: all that run from the start) is
        RUNNING with /readyz 200."""
        pending = self.members(program) if program else self.startup_names()
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

    def up_workers(self, program: str = WORKER) -> list[str]:
        """The processes of a worker program that are started and not being stopped."""
        names = set(self.members(program))
        return [
            name
            for name, state in self._states().items()
            if name in names and state in ("STARTING", "RUNNING", "BACKOFF")
        ]

    def wait_workers(self, count: int, program: str = WORKER, timeout: float = 90) -> None:
        """Wait until at least ``count`` processes of ``program`` answer /readyz 200 (the
        autoscaler starts them)."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [
                name
                for name, state in self._states().items()
                if name in self.members(program)
                and state == "RUNNING"
                and http_status(self.port(name), "/readyz") == 200
            ]
            if len(ready) >= count:
                return
            if time.monotonic() > deadline:
                raise self._not_ready(
                    "scheduler", f"{len(ready)} of {count} {program} processes ready"
                )
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
