"""The layout of a local cluster (``tools.cluster``): its processes, their ports and
environments, and the supervisord configuration that runs them. Nothing here starts a
process."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.provision import REPO_ROOT
from tools.supervision import (
    MARKER_VAR,
    PROGRAM_OPTIONS,
    env_value,
    esc,
    marker_for,
    numbered_command,
    python_command,
    section,
    socket_path,
)

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
    # supervisord's wait for a stopped worker before its SIGKILL (None: ``PROGRAM_OPTIONS``'
    # 30 s); above the workers' ``STRATUS_SHUTDOWN_GRACE_S`` where a stop must wait for jobs
    worker_stop_wait_s: int | None = None
    python: str = sys.executable
    autoscale: Autoscale | None = None  # None: ``workers`` fixed worker processes

    @property
    def worker_processes(self) -> int:
        return self.autoscale.max_workers if self.autoscale else self.workers

    @property
    def cuda_processes(self) -> int:
        return self.autoscale.cuda_max_workers if self.autoscale else 0


class ClusterLayout:
    """What one ``ClusterConfig`` runs and where: process names, ports, log files, and the
    supervisord configuration rooted in ``run_dir``.

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
        if self.cfg.worker_stop_wait_s is not None:
            options["stopwaitsecs"] = str(self.cfg.worker_stop_wait_s)
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
