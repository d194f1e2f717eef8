"""Private PostgreSQL, Redis and RabbitMQ instances on ports of their own, for tests that
stop and restart servers (the chaos suite): a developer's servers are never touched.

    with PrivateServers.create() as servers:          # initdb + pg_ctl, redis-server, a node
        env = servers.env()                            # STRATUS_POSTGRES__PORT ... for services
        servers.restart_postgres(down_s=2)             # pg_ctl stop -m fast, then start
        servers.restart_redis(down_s=2)
        servers.restart_rabbitmq(down_s=2)             # rabbitmqctl stop_app / start_app

Everything lives in one temporary directory; ``stop`` (also on ``__exit__`` and when
``start`` fails half-way) stops all three, by their pids as a last resort, and removes it.
Running as root, PostgreSQL runs as ``postgres`` and RabbitMQ as ``rabbitmq`` (their own
users, which own their data directories; the node shares the erlang cookie of the system
RabbitMQ); as another user, both run as that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tools.supervision import Running, alive, kill_all

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


class ServerError(RuntimeError):
    """A private server could not be started, restarted or stopped."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on now (loopback)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts[-3])
    if found:
        return found[-1].parent
    exe = shutil.which("pg_ctl")
    if exe is None:
        raise ServerError("pg_ctl not found (apt-get install postgresql)")
    return Path(exe).parent


def _rabbit_tool(name: str) -> str:
    candidate = RABBIT_BIN / name
    if candidate.exists():
        return str(candidate)
    exe = shutil.which(name)
    if exe is None:
        raise ServerError(f"{name} not found (apt-get install rabbitmq-server)")
    return exe


def _as_user(user: str) -> list[str]:
    """The prefix that runs a command as ``user`` (only needed, and only possible, as root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(user)
    except KeyError:
        return []
    return ["runuser", "-u", user, "--"]


def _home_of(user: str) -> str:
    if os.geteuid() != 0:
        return os.path.expanduser("~")
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def _own(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class PrivateServers(Running):
    root: Path
    pg_port: int
    redis_port: int
    rabbit_port: int
    rabbit_dist_port: int
    node: str
    started: set[str] = field(default_factory=set)
    pg_options: str = ""  # more ``-c name=value`` for the PostgreSQL server

    @classmethod
    def create(cls, root: Path | None = None, *, pg_options: str = "") -> PrivateServers:
        base = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="stratus-srv-"))
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)  # noqa: S103 (the postgres and rabbitmq users enter it)
        pg, redis, rabbit, dist = free_ports(4)
        node = f"stratus-{uuid.uuid4().hex[:8]}@localhost"
        return cls(base, pg, redis, rabbit, dist, node, pg_options=pg_options)

    # --- what services need ------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {
            "STRATUS_POSTGRES__HOST": "127.0.0.1",
            "STRATUS_POSTGRES__PORT": str(self.pg_port),
            "STRATUS_POSTGRES__USER": "postgres",
            "STRATUS_POSTGRES__PASSWORD": "",
            "STRATUS_RABBIT__HOST": "127.0.0.1",
            "STRATUS_RABBIT__PORT": str(self.rabbit_port),
            "STRATUS_RABBIT__USER": "guest",
            "STRATUS_RABBIT__PASSWORD": "guest",
            "STRATUS_RABBIT__VHOST": "/",
            "STRATUS_REDIS__URL": f"redis://127.0.0.1:{self.redis_port}/0",
        }

    # --- PostgreSQL ----------------------------------------------------------------------------
    @property
    def pg_data(self) -> Path:
        return self.root / "postgres" / "data"

    def _pg(self, *args: str, timeout: float = 120) -> None:
        cmd = [*_as_user("postgres"), str(_postgres_bin() / args[0]), *args[1:]]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )
        if proc.returncode != 0:
            raise ServerError(f"{' '.join(args[:2])} failed: {proc.stdout}{proc.stderr}")

    def _init_postgres(self) -> None:
        home = self.root / "postgres"
        home.mkdir(exist_ok=True)
        _own(home, "postgres")
        self._pg("initdb", "-D", str(self.pg_data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start_postgres(self) -> None:
        options = (
            f"-p {self.pg_port} -k {self.root / 'postgres'} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        if self.pg_options:
            options += " " + self.pg_options
        log = str(self.root / "postgres" / "server.log")
        self._pg(
            "pg_ctl", "-D", str(self.pg_data), "-l", log, "-w", "-t", "60", "-o", options, "start"
        )
        self.started.add("postgres")

    def stop_postgres(self) -> None:
        if self.pg_data.exists():
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self._pg(
                    "pg_ctl",
                    "-D",
                    str(self.pg_data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                    timeout=60,
                )
        pid = _read_pid(self.pg_data / "postmaster.pid")
        if pid is not None and alive(pid):
            kill_all([pid], grace=10)

    def restart_postgres(self, *, down_s: float = 0.0) -> None:
        """``pg_ctl stop -m fast`` (every connection is cut), ``down_s`` away, then start."""
        self._pg("pg_ctl", "-D", str(self.pg_data), "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self.start_postgres()

    # --- Redis ---------------------------------------------------------------------------------
    @property
    def redis_pidfile(self) -> Path:
        return self.root / "redis" / "redis.pid"

    def start_redis(self) -> None:
        home = self.root / "redis"
        home.mkdir(exist_ok=True)
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerError("redis-server not found (apt-get install redis-server)")
        args = [
            exe,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(home),
            "--pidfile",
            str(self.redis_pidfile),
            "--logfile",
            str(home / "server.log"),
        ]
        subprocess.run(args, check=True, timeout=30, capture_output=True)
        _wait(lambda: tcp_open(self.redis_port), 30, "redis-server")
        self.started.add("redis")

    def stop_redis(self) -> None:
        pid = _read_pid(self.redis_pidfile)
        if pid is not None and alive(pid):
            kill_all([pid], grace=10)
        _wait(lambda: not tcp_open(self.redis_port), 10, "redis-server stop")

    def restart_redis(self, *, down_s: float = 0.0) -> None:
        self.stop_redis()
        time.sleep(down_s)
        self.start_redis()

    # --- RabbitMQ ------------------------------------------------------------------------------
    @property
    def rabbit_home(self) -> Path:
        return self.root / "rabbitmq"

    def _rabbit_env(self) -> dict[str, str]:
        home = self.rabbit_home
        return {
            "HOME": _home_of("rabbitmq"),  # the erlang cookie of the system node
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.rabbit_port),
            "RABBITMQ_DIST_PORT": str(self.rabbit_dist_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        }

    def _rabbit(self, tool: str, *args: str, timeout: float = 120) -> str:
        env_args = [f"{k}={v}" for k, v in self._rabbit_env().items()]
        cmd = [*_as_user("rabbitmq"), "env", *env_args, _rabbit_tool(tool), *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )
        if proc.returncode != 0:
            raise ServerError(f"{tool} {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl -n NODE args`` against the private node."""
        return self._rabbit("rabbitmqctl", "-n", self.node, *args, timeout=timeout)

    def start_rabbitmq(self) -> None:
        home = self.rabbit_home
        home.mkdir(exist_ok=True)
        (home / "enabled_plugins").write_text("[].\n")  # no management plugin
        # the system's rabbitmq.conf names the default port: this node has a file of its own
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.rabbit_port}\nloopback_users = none\n"
        )
        for path in (home, home / "enabled_plugins", home / "rabbitmq.conf"):
            _own(path, "rabbitmq")
        self._rabbit("rabbitmq-server", "-detached", timeout=60)
        self.started.add("rabbitmq")
        self.ctl("wait", str(home / "rabbit.pid"), "--timeout", "120", timeout=150)
        _wait(lambda: tcp_open(self.rabbit_port), 30, "rabbitmq")

    def stop_rabbitmq(self) -> None:
        pidfile = self.rabbit_home / "rabbit.pid"
        with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
            self.ctl("stop", str(pidfile), timeout=60)
        pid = _read_pid(pidfile)
        if pid is not None and alive(pid):
            kill_all([pid], grace=10)

    def restart_rabbitmq(self, *, down_s: float = 0.0) -> None:
        """``rabbitmqctl stop_app``, ``down_s`` away, ``start_app`` (the node stays up)."""
        self.ctl("stop_app")
        time.sleep(down_s)
        self.ctl("start_app")
        _wait(lambda: tcp_open(self.rabbit_port), 60, "rabbitmq after start_app")

    # --- all -----------------------------------------------------------------------------------
    def start(self) -> None:
        atexit.register(self.stop)  # also when the caller forgets (not after a kill -9)
        try:
            self._init_postgres()
            self.start_postgres()
            self.start_redis()
            self.start_rabbitmq()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop whatever runs (idempotent) and remove the directory."""
        atexit.unregister(self.stop)
        for stop in (self.stop_rabbitmq, self.stop_redis, self.stop_postgres):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"private servers: {stop.__name__}: {exc}")
        self.started.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> dict[str, Path]:
        return {
            "postgres": self.root / "postgres" / "server.log",
            "redis": self.root / "redis" / "server.log",
            "rabbitmq": self.rabbit_home / "log",
        }


def _main() -> None:  # a manual check: start, restart each, stop
    with PrivateServers.create() as servers:
        print(servers.env())
        for restart in (servers.restart_postgres, servers.restart_redis, servers.restart_rabbitmq):
            started = time.monotonic()
            restart(down_s=0.5)
            print(f"{restart.__name__}: {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    _main()
