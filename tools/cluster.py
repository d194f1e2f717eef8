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
from pathlib import Path

from tools.cluster_layout import (
    CUDA_WORKER,
    SERVICES,
    WORKER,
    Autoscale,
    ClusterConfig,
    ClusterError,
    ClusterLayout,
)
from tools.provision import REPO_ROOT, drop_database, drop_vhost, prepare_database, prepare_vhost
from tools.supervision import (
    ProcessStatus,
    Running,
    Supervisor,
    alive,
    http_status,
    is_marked,
    kill_all,
    marked_pids,
    port_in_use,
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


class LocalCluster(ClusterLayout, Running):
    """The services of one ``ClusterConfig`` under one supervisord rooted in ``run_dir``:
    started, waited for, signalled and stopped (the layout is ``ClusterLayout``'s)."""

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


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.cluster up|down|status|env`` (the command line is in ``cluster_cli``)."""
    from tools.cluster_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
