"""Command line of ``tools.cluster``: ``python -m tools.cluster up|down|status|env``.

``up`` (the no-Docker ``make up``): ensure the servers (scripts/ensure-servers.sh), read or
create ``run/stratus.env`` (generated admin key and key secret, kept across restarts), prepare
the database and vhost it names (``stratus``), then start every service under supervisord in
``run/``. ``down`` stops that supervisord and its services, never the servers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tools.cluster import Autoscale, ClusterConfig, ClusterError, LocalCluster
from tools.provision import (
    REPO_ROOT,
    ProvisionError,
    ensure_env_file,
    prepare_database,
    prepare_vhost,
)
from tools.supervision import MARKER_VAR

RUN_DIR = REPO_ROOT / "run"
ENV_FILE_DEFAULTS = {
    "STRATUS_POSTGRES__DATABASE": "stratus",
    "STRATUS_RABBIT__VHOST": "stratus",
    "STRATUS_ENVIRONMENT": "production",
    # The scheduler vacuums the tables a steady load churns (shared.db.maintenance): the
    # PostgreSQL that scripts/ensure-servers.sh finds on the CI machines runs with autovacuum
    # off, and dead outbox and job rows would slow every statement. Set it to false in
    # run/stratus.env for a server whose autovacuum is on.
    "STRATUS_DB_VACUUM": "true",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="default: run/")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="ensure servers, prepare db + vhost, start the services")
    defaults = ClusterConfig(run_dir=RUN_DIR)
    scaling = Autoscale()
    up.add_argument(
        "--workers", type=int, default=None, help="a fixed number of workers (no autoscaling)"
    )
    up.add_argument(
        "--min-workers",
        type=int,
        default=scaling.min_workers,
        help="autoscaled cpu pool: at least this many workers (0: scale to zero)",
    )
    up.add_argument("--max-workers", type=int, default=scaling.max_workers)
    for name in ("gateway", "scheduler", "datamover", "worker_base"):
        flag = f"--{name.replace('_', '-')}-port"
        up.add_argument(flag, type=int, default=getattr(defaults, f"{name}_port"))
    up.add_argument("--timeout", type=float, default=180.0, help="readiness wait, seconds")
    up.add_argument("--skip-servers", action="store_true", help="do not run ensure-servers.sh")
    sub.add_parser("down", help="stop the services started by `up` (never the servers)")
    sub.add_parser("status", help="show the supervisord status of every process")
    sub.add_parser("env", help="create run/stratus.env (secrets) if missing")
    return parser


def _deployment_env(run_dir: Path) -> dict[str, str]:
    """run_dir/stratus.env, plus STRATUS_* from the shell for keys the file does not set."""
    values = ensure_env_file(run_dir / "stratus.env", ENV_FILE_DEFAULTS)
    extra = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("STRATUS_") and k not in values and k not in (MARKER_VAR, "STRATUS_PORT")
    }
    if extra:
        print(f"also passing from the environment: {', '.join(sorted(extra))}")
    return values | extra


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _print_status(cluster: LocalCluster) -> None:
    for p in cluster.status():
        print(f"{p.namespec:<20} {p.state:<9} {p.description:<32} {cluster.url(p.name)}")


def _up(args: argparse.Namespace) -> int:
    if not args.skip_servers:
        script = REPO_ROOT / "scripts" / "ensure-servers.sh"
        rc = subprocess.run(["bash", str(script)], check=False).returncode
        if rc != 0:
            print("tools.cluster: the servers are not up (see above)", file=sys.stderr)
            return rc
    env = _deployment_env(args.run_dir)
    cfg = ClusterConfig(
        run_dir=args.run_dir,
        env=env,
        workers=args.workers or 1,
        autoscale=None
        if args.workers
        else Autoscale(min_workers=args.min_workers, max_workers=args.max_workers),
        gateway_port=args.gateway_port,
        scheduler_port=args.scheduler_port,
        datamover_port=args.datamover_port,
        worker_base_port=args.worker_base_port,
    )
    cluster = LocalCluster(cfg)
    if cluster.running():
        print(
            f"already running from {cluster.run_dir} (supervisord pid {cluster.supervisord_pid()})"
        )
    else:
        prepare_vhost(env["STRATUS_RABBIT__VHOST"], env=env)
        prepare_database(env["STRATUS_POSTGRES__DATABASE"], env=env)
        cluster.start(timeout=args.timeout)
        pid = cluster.supervisord_pid()
        print(f"Stratus is up (supervisord pid {pid}, logs in {cluster.log_dir})")
    _print_status(cluster)
    print(f"\nGateway:   {cluster.url('gateway')}")
    env_file = _shown(args.run_dir / "stratus.env")
    print(f"Admin key: grep '^STRATUS_ADMIN_KEY=' {env_file} | cut -d= -f2-")
    print("Stop with: make down   (python -m tools.cluster down)")
    return 0


def _down(args: argparse.Namespace) -> int:
    cluster = LocalCluster(ClusterConfig(run_dir=args.run_dir))
    was_running = cluster.running()
    cluster.stop()
    print(f"stopped the cluster of {cluster.run_dir}" if was_running else "not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = LocalCluster(ClusterConfig(run_dir=args.run_dir))
    if not cluster.running():
        print(f"not running (no supervisord for {cluster.run_dir})")
        return 3
    for p in cluster.status():
        print(f"{p.namespec:<20} {p.state:<9} {p.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.run_dir = args.run_dir.resolve()
    commands = {"up": _up, "down": _down, "status": _status}
    try:
        if args.command == "env":
            ensure_env_file(args.run_dir / "stratus.env", ENV_FILE_DEFAULTS)
            print(args.run_dir / "stratus.env")
            return 0
        return commands[args.command](args)
    except (ClusterError, ProvisionError) as exc:
        print(f"tools.cluster: {exc}", file=sys.stderr)
        return 1
