"""The Kubernetes manifests (``deploy/kubernetes/``) and the compose autoscaling override
agree with the code: they parse, every image is the one the Dockerfile builds, every command
runs a real service, every ``STRATUS_*`` variable is a settings field of the service that gets
it, every queue KEDA watches is a real work queue, KEDA's bounds are the scheduler's, and the
demand queries KEDA runs work on the real schema.

No cluster is needed: the files are parsed; the SQL runs on the tests' own database.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.settings import SchedulerSettings
from shared.db.models import Tenant, WorkerPool
from shared.messaging.topology import WORK_QUEUES
from shared.settings import CommonSettings, RabbitSettings
from tests.deploy.test_compose import (
    COMPOSE_SERVICES,
    REPO,
    field_path,
    resolve,
    service_folders,
    settings_class,
)
from tests.factories import new_job, own_database

K8S = REPO / "deploy" / "kubernetes"
OVERRIDE = REPO / "deploy" / "docker" / "compose.autoscale.yml"
IMAGE = COMPOSE_SERVICES["gateway"]["image"]  # the image compose builds from the Dockerfile


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = {p.name: _docs(p) for p in sorted(K8S.glob("*.yaml"))}
APPLIED = [
    d for name in _docs(K8S / "kustomization.yaml")[0]["resources"] for d in ALL[name]
]  # what `kubectl apply -k` creates
BY_KIND: dict[str, dict[str, dict[str, Any]]] = {}
for _doc in (d for docs in ALL.values() for d in docs if d["kind"] != "Kustomization"):
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc
DEPLOYMENTS = BY_KIND["Deployment"]
CONFIG_KEYS = set(BY_KIND["ConfigMap"]["stratus-config"]["data"])
SECRET_KEYS = set(BY_KIND["Secret"]["stratus-secrets"]["stringData"])


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _module(container: dict[str, Any]) -> str:
    cmd = container["command"]
    assert cmd[:2] == ["python", "-m"], cmd
    assert cmd[2].startswith("services."), cmd
    return str(cmd[2].split(".", 1)[1])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", [])}


def test_the_kustomization_names_every_manifest_and_no_secret_values() -> None:
    resources = _docs(K8S / "kustomization.yaml")[0]["resources"]
    assert set(resources) == set(ALL) - {"kustomization.yaml", "secret.example.yaml"}
    assert not [d for d in APPLIED if d["kind"] == "Secret"]


def test_a_deployment_per_service() -> None:
    modules = {_module(_container(d)) for d in DEPLOYMENTS.values()}
    assert modules == service_folders()
    assert {"worker", "cuda-worker"} <= set(DEPLOYMENTS)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_image_command_probes_and_settings(name: str) -> None:
    d = DEPLOYMENTS[name]
    c = _container(d)
    assert c["image"] == IMAGE
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    cls = settings_class(_module(c))
    env = _env(c)
    unknown = sorted(k for k in env if k.startswith("STRATUS_") and field_path(cls, k) is None)
    assert not unknown, f"{name}: no {cls.__name__} field for {unknown}"
    assert env["STRATUS_PORT"] == str(c["ports"][0]["containerPort"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
    assert refs == {"stratus-config", "stratus-secrets"}


def test_shared_config_and_secret_keys_are_settings_fields() -> None:
    classes = [settings_class(m) for m in sorted(service_folders())]
    for key in sorted(CONFIG_KEYS | SECRET_KEYS):
        assert key.startswith("STRATUS_"), key
        assert field_path(CommonSettings, key) or any(field_path(c, key) for c in classes), key


def test_the_migration_job_runs_alembic_from_the_same_image() -> None:
    job = BY_KIND["Job"]["stratus-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["image"] == IMAGE
    assert job["command"] == ["alembic", "upgrade", "head"]


def test_workers_stop_gracefully_within_the_pods_grace_period() -> None:
    for name in ("worker", "cuda-worker"):
        d = DEPLOYMENTS[name]
        env = _env(_container(d))
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert float(env["STRATUS_SHUTDOWN_GRACE_S"]) < grace, name
    assert _env(_container(DEPLOYMENTS["cuda-worker"]))["STRATUS_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" in _container(DEPLOYMENTS["cuda-worker"])["resources"]["limits"]


def _scheduler_settings(monkeypatch: pytest.MonkeyPatch) -> SchedulerSettings:
    for key, value in _env(_container(DEPLOYMENTS["scheduler"])).items():
        monkeypatch.setenv(key, value)
    return SchedulerSettings()


@pytest.mark.parametrize(("scaled", "pool"), [("worker", "cpu"), ("cuda-worker", "cuda")])
def test_keda_watches_real_queues_with_the_schedulers_bounds(
    scaled: str, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _scheduler_settings(monkeypatch).autoscale
    assert settings.enabled
    assert settings.backend == "kubernetes"  # KEDA acts; the scheduler only observes
    bounds = settings.cpu if pool == "cpu" else settings.cuda
    target = bounds.target_jobs_per_worker or settings.target_jobs_per_worker
    so = BY_KIND["ScaledObject"][scaled]["spec"]
    assert so["scaleTargetRef"]["name"] == scaled
    assert _env(_container(DEPLOYMENTS[scaled]))["STRATUS_DEVICE"] == pool
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (
        bounds.min_workers,
        bounds.max_workers,
    )
    assert so["cooldownPeriod"] == settings.cooldown_s
    down = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == settings.cooldown_s
    assert [(p["type"], p["value"]) for p in down["policies"]] == [("Pods", 1)]
    triggers = {t["type"]: t for t in so["triggers"]}
    assert set(triggers) == {"rabbitmq", "postgresql"}
    queue = f"{RabbitSettings().queue_prefix}.{WORK_QUEUES[pool].name}"
    assert triggers["rabbitmq"]["metadata"]["queueName"] == queue
    for t in triggers.values():
        assert t["authenticationRef"]["name"] in BY_KIND["TriggerAuthentication"]
    assert float(triggers["postgresql"]["metadata"]["targetQueryValue"]) == target
    assert pool in triggers["postgresql"]["metadata"]["query"]


def test_the_compose_autoscaling_override(monkeypatch: pytest.MonkeyPatch) -> None:
    override = yaml.safe_load(OVERRIDE.read_text())["services"]
    assert set(override) <= set(COMPOSE_SERVICES)
    scheduler = {k: resolve(v) for k, v in override["scheduler"]["environment"].items()}
    for key in list(scheduler):
        assert field_path(SchedulerSettings, key), key
        monkeypatch.setenv(key, scheduler[key])
    settings = SchedulerSettings().autoscale
    assert settings.enabled
    assert settings.backend == "docker"
    assert settings.docker.cpu_service in COMPOSE_SERVICES
    assert (
        settings.docker.project == yaml.safe_load((REPO / "docker-compose.yml").read_text())["name"]
    )
    mounts = [str(v).split(":")[1] for v in override["scheduler"]["volumes"]]
    assert settings.docker.socket in mounts
    worker = {k: resolve(v) for k, v in override["worker"]["environment"].items()}
    cls = settings_class("worker")
    assert all(field_path(cls, k) for k in worker)
    assert float(worker["STRATUS_SHUTDOWN_GRACE_S"]) < settings.docker.stop_timeout_s


async def test_kedas_demand_is_the_schedulers_while_fresh_else_every_active_job(
    settings: CommonSettings,
) -> None:
    """The postgresql trigger reads the scheduler's demand (``worker_pools``, held jobs left
    out) while its autoscaler keeps it fresh, and counts every active job of the pool when the
    row is missing or older than 30 s."""
    queries = {}
    for so in BY_KIND["ScaledObject"].values():
        query = next(t for t in so["spec"]["triggers"] if t["type"] == "postgresql")
        sql = query["metadata"]["query"]
        queries["cuda" if "'cuda'" in sql else "cpu"] = text(sql)
    assert set(queries) == {"cpu", "cuda"}

    async def values(db: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        async with db() as session:
            return {pool: await session.scalar(q) for pool, q in queries.items()}

    async with own_database(settings, "keda") as (_, db):
        tid = uuid.uuid4()
        async with db() as session, session.begin():
            session.add(Tenant(id=tid, name="keda", weight=1, quotas={}, suspended=False))
            await session.flush()
            session.add_all([new_job(tid, state="QUEUED") for _ in range(4)])
            session.add_all([new_job(tid, device="any", state="PENDING")])
            session.add_all([new_job(tid, device="cuda", state="RUNNING") for _ in range(2)])
            session.add_all([new_job(tid, state="SUCCEEDED") for _ in range(3)])
        assert await values(db) == {"cpu": 5, "cuda": 2}  # no scheduler yet: every active job

        async with db() as session, session.begin():
            for pool, queued, running, held in (("cpu", 1, 1, 3), ("cuda", 0, 0, 2)):
                session.add(
                    WorkerPool(
                        pool=pool,
                        backend="kubernetes",
                        min_workers=0,
                        max_workers=8,
                        target_jobs_per_worker=4,
                        cooldown_s=60,
                        current_workers=1,
                        desired_workers=1,
                        queued_jobs=queued,
                        running_jobs=running,
                        held_jobs=held,
                    )
                )
        assert await values(db) == {"cpu": 2, "cuda": 0}  # the scheduler's demand

        async with db() as session, session.begin():
            await session.execute(
                text("UPDATE worker_pools SET updated_at = now() - interval '1 minute'")
            )
        assert await values(db) == {"cpu": 5, "cuda": 2}  # stale: every active job again


def test_two_schedulers_one_leading_one_standing_by() -> None:
    """Two scheduler replicas: the leader lock (``services.scheduler.leader``) lets one act;
    the standby must still be ready (``/readyz`` does not ask for the lock), and the two
    prefer different nodes."""
    d = DEPLOYMENTS["scheduler"]
    assert d["spec"]["replicas"] == 2
    spec = d["spec"]["template"]["spec"]
    assert _container(d)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector == d["spec"]["selector"]["matchLabels"]
