"""``tools.cluster`` with autoscaled workers (what ``make up`` runs without Docker): the worker
programs are sized for the maximum and left to the scheduler, which is told where
supervisord's socket is; supervisord itself accepts the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from supervisor.options import ServerOptions  # type: ignore[import-untyped]

from services.scheduler.settings import SchedulerSettings
from tools.cluster import CUDA_WORKER, Autoscale, ClusterConfig, LocalCluster
from tools.cluster_cli import _parser


def _processes(cluster: LocalCluster) -> dict[str, Any]:
    options = ServerOptions()
    options.realize(args=["-c", str(cluster.write_config())])
    return {p.name: p for g in options.process_group_configs for p in g.process_configs}


def test_autoscaled_programs_and_the_schedulers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ClusterConfig(
        run_dir=tmp_path,
        env={"STRATUS_AUTOSCALE__COOLDOWN_S": "7"},
        worker_base_port=9100,
        autoscale=Autoscale(
            min_workers=0, max_workers=3, cuda_max_workers=2, cuda_env={"STRATUS_X": "1"}
        ),
    )
    cluster = LocalCluster(cfg)
    procs = _processes(cluster)
    workers = [n for n in procs if n.startswith("worker_")]
    cuda = [n for n in procs if n.startswith(f"{CUDA_WORKER}_")]
    assert workers == cluster.worker_names() == ["worker_00", "worker_01", "worker_02"]
    assert cuda == cluster.cuda_worker_names() == ["cuda_worker_00", "cuda_worker_01"]
    for name in workers + cuda:
        assert procs[name].autostart is False
        assert procs[name].autorestart  # a crash is restarted
    for name in ("gateway", "scheduler", "datamover"):
        assert procs[name].autostart is True
    cuda_env = procs["cuda_worker_01"].environment
    assert cuda_env["STRATUS_DEVICE"] == "cuda"
    assert cuda_env["STRATUS_X"] == "1"
    assert "$((9150 + 1))" in procs["cuda_worker_01"].command
    assert cluster.port("cuda_worker_01") == 9151
    assert cluster.namespec("cuda_worker_01") == "cuda_worker:cuda_worker_01"
    assert cluster.startup_names() == ["gateway", "scheduler", "datamover"]

    env = procs["scheduler"].environment
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = SchedulerSettings().autoscale
    assert settings.enabled
    assert settings.backend == "local"
    assert Path(settings.local.supervisor_socket) == cluster.socket
    assert settings.local.cpu_program == "worker"
    assert settings.local.cuda_program == CUDA_WORKER
    assert (settings.cpu.min_workers, settings.cpu.max_workers) == (0, 3)
    assert (settings.cuda.min_workers, settings.cuda.max_workers) == (0, 2)
    assert settings.cooldown_s == 7  # the cluster's env wins over its defaults
    assert "STRATUS_AUTOSCALE__ENABLED" not in procs["gateway"].environment


def test_make_up_autoscales_unless_told_a_fixed_count() -> None:
    up = _parser().parse_args(["up"])
    assert up.workers is None
    assert (up.min_workers, up.max_workers) == (Autoscale().min_workers, Autoscale().max_workers)
    fixed = _parser().parse_args(["up", "--workers", "2"])
    assert fixed.workers == 2
