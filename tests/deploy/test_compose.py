"""The deployment descriptions agree with the code: docker-compose.yml, the Dockerfile and the
supervisord config of ``tools.cluster`` name the real services and real settings.

No server is needed: the files are parsed, never run.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import inspect
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from supervisor.datatypes import dict_of_key_value_pairs  # type: ignore[import-untyped]
from supervisor.options import ServerOptions  # type: ignore[import-untyped]

from shared.settings import CommonSettings
from tools.cluster import SERVICES, ClusterConfig, LocalCluster
from tools.supervision import env_value

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = load_compose()
COMPOSE_SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def stratus_module(service: dict[str, Any]) -> str | None:
    """``X`` when the service runs ``python -m services.X``."""
    cmd = command_of(service)
    runs_module = len(cmd) >= 3 and cmd[0].startswith("python") and cmd[1] == "-m"
    if runs_module and cmd[2].startswith("services."):
        return cmd[2].split(".", 1)[1]
    return None


STRATUS = {name: mod for name, s in COMPOSE_SERVICES.items() if (mod := stratus_module(s))}
IMAGE_SERVICES = sorted(
    name for name, s in COMPOSE_SERVICES.items() if s.get("image") == "stratus:latest"
)


def service_folders() -> set[str]:
    return {p.parent.name for p in (REPO / "services").glob("*/__main__.py")}


def resolve(value: object) -> str:
    """The value compose would pass, with ``${VAR}`` / ``${VAR:?msg}`` set to a test value
    and ``${VAR:-default}`` to its default."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if op.endswith("-"):
            return arg
        return f"test-{name.lower()}-value"

    return INTERPOLATION.sub(sub, str(value)).replace("$$", "$")


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): resolve(v) for k, v in env.items()}


def settings_class(module: str | None) -> type[CommonSettings]:
    """The settings class ``services/<module>/settings.py`` defines (CommonSettings for the
    migration step: ``migrations/env.py`` reads it)."""
    if module is None:
        return CommonSettings
    mod = importlib.import_module(f"services.{module}.settings")
    found = [
        cls
        for _, cls in inspect.getmembers(mod, inspect.isclass)
        if issubclass(cls, CommonSettings) and cls.__module__ == mod.__name__
    ]
    assert len(found) == 1, f"services/{module}/settings.py: expected one settings class"
    return found[0]


def field_path(cls: type[BaseModel], var: str) -> list[str] | None:
    """``STRATUS_POSTGRES__HOST`` -> ``["postgres", "host"]`` when those fields exist."""
    parts = var.removeprefix("STRATUS_").lower().split("__")
    model: type[BaseModel] = cls
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return None
            model = nested
    return parts


def value_at(obj: object, path: list[str]) -> str:
    for part in path:
        obj = getattr(obj, part)
    if isinstance(obj, SecretStr):
        obj = obj.get_secret_value()
    return str(obj)


# --- services --------------------------------------------------------------------------------
def test_every_compose_command_has_a_main() -> None:
    assert STRATUS, "no service runs python -m services.X"
    for name, module in STRATUS.items():
        assert (REPO / "services" / module / "__main__.py").is_file(), name


def test_compose_runs_every_service_folder() -> None:
    assert set(STRATUS.values()) == service_folders()
    assert set(STRATUS) == set(STRATUS.values()), "compose service names follow the folders"


@pytest.mark.parametrize("name", sorted(STRATUS))
def test_stratus_services_restart_and_report_readiness(name: str) -> None:
    service = COMPOSE_SERVICES[name]
    assert service["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    env = environment_of(service)
    assert env["STRATUS_HOST"] == "0.0.0.0"
    assert env["STRATUS_PORT"] == str(settings_class(STRATUS[name]).model_fields["port"].default)


def test_worker_is_scalable() -> None:
    worker = COMPOSE_SERVICES["worker"]
    assert "container_name" not in worker
    for port in worker.get("ports", []):  # a container port alone gets an ephemeral host port
        if isinstance(port, dict):
            assert not port.get("published"), port
        else:
            assert ":" not in str(port), port


# --- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_stratus_variables_are_settings_fields(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = settings_class(STRATUS.get(name))
    env = {
        k: v for k, v in environment_of(COMPOSE_SERVICES[name]).items() if k.startswith("STRATUS_")
    }
    unknown = sorted(k for k in env if field_path(cls, k) is None)
    assert not unknown, f"{name}: no {cls.__name__} field for {unknown}"
    for key in list(os.environ):
        if key.startswith("STRATUS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()  # parses every value (and refuses placeholder secrets in production)
    for key, value in env.items():
        path = field_path(cls, key)
        assert path is not None
        assert value_at(settings, path) == value, key


def test_interpolated_stratus_variables_are_settings_fields() -> None:
    named = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    classes = [settings_class(m) for m in sorted(service_folders())]
    for var in sorted(v for v in named if v.startswith("STRATUS_")):
        assert any(field_path(cls, var) for cls in classes), var


# --- dependencies ----------------------------------------------------------------------------
def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {target: spec.get("condition", "service_started") for target, spec in deps.items()}


@pytest.mark.parametrize("name", sorted(COMPOSE_SERVICES))
def test_depends_on_targets_exist(name: str) -> None:
    for target, condition in depends_on(COMPOSE_SERVICES[name]).items():
        assert target in COMPOSE_SERVICES, f"{name} depends on unknown {target}"
        assert condition in CONDITIONS
        if condition == "service_healthy":
            assert "healthcheck" in COMPOSE_SERVICES[target], target
        if condition == "service_completed_successfully":
            assert COMPOSE_SERVICES[target].get("restart", "no") == "no", target


def test_services_wait_for_servers_and_migrations() -> None:
    assert command_of(COMPOSE_SERVICES["migrate"])[:3] == ["alembic", "upgrade", "head"]
    assert depends_on(COMPOSE_SERVICES["migrate"]) == {"postgres": "service_healthy"}
    for name in STRATUS:
        deps = depends_on(COMPOSE_SERVICES[name])
        assert deps["migrate"] == "service_completed_successfully", name
        for server in ("postgres", "rabbitmq", "redis"):
            assert deps[server] == "service_healthy", (name, server)


# --- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [rest for op, rest in dockerfile_instructions() if op in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        for source in args[:-1]:
            assert (REPO / source).exists(), source
            top = Path(source).parts[0]
            assert not any(fnmatch.fnmatch(top, pat) for pat in ignored), f"{source} ignored"


def test_dockerfile_runs_unprivileged_with_gateway_default() -> None:
    ops = dockerfile_instructions()
    # the base image is a build argument whose default is the official slim Python image
    assert ops[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ops[1] == ("FROM", "${BASE_IMAGE}")
    users = [rest for op, rest in ops if op == "USER"]
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0")
    assert ("CMD", '["python", "-m", "services.gateway"]') in ops
    assert not any(op == "HEALTHCHECK" for op, _ in ops)


# --- tools.cluster (supervisord) -------------------------------------------------------------
def test_local_cluster_config_names_the_compose_services(tmp_path: Path) -> None:
    cfg = ClusterConfig(run_dir=tmp_path, env={"STRATUS_LOG_LEVEL": "DEBUG"}, workers=3)
    path = LocalCluster(cfg).write_config()
    parser = configparser.RawConfigParser()
    parser.read(path)
    programs = {s.split(":", 1)[1]: s for s in parser.sections() if s.startswith("program:")}
    assert set(programs) == set(STRATUS) == set(SERVICES)
    for section in programs.values():
        assert parser.get(section, "autorestart") == "true"
        assert parser.get(section, "stopasgroup") == "true"
        assert parser.get(section, "killasgroup") == "true"
        assert parser.get(section, "stopsignal") == "TERM"
    assert parser.get("program:worker", "numprocs") == "3"
    assert path.stat().st_mode & 0o077 == 0  # it holds the secrets


def test_supervisord_reads_the_config(tmp_path: Path) -> None:
    cfg = ClusterConfig(
        run_dir=tmp_path, env={"STRATUS_X": 'a%b"c,d'}, workers=2, worker_base_port=9100
    )
    cluster = LocalCluster(cfg)
    options = ServerOptions()
    options.realize(args=["-c", str(cluster.write_config())])
    procs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    assert set(procs) == set(cluster.process_names())
    assert cluster.process_names()[-2:] == ["worker_00", "worker_01"]
    for name, proc in procs.items():
        assert proc.environment["STRATUS_X"] == 'a%b"c,d'
        assert Path(proc.stdout_logfile) == cluster.log_path(name)
        assert proc.redirect_stderr
        assert proc.stopwaitsecs == 30
        assert Path(proc.directory) == REPO
    assert procs["gateway"].environment["STRATUS_PORT"] == "8000"
    assert "$((9100 + 1))" in procs["worker_01"].command
    assert cluster.url(cluster.worker(1)) == "http://127.0.0.1:9101"


@pytest.mark.parametrize("value", ["plain", "a,b=c", 'say "hi" twice', "it's", "50%", ""])
def test_environment_values_survive_supervisord_parsing(value: str) -> None:
    text = env_value({"K": value, "L": "x"}) % {}  # supervisord expands %(...)s first
    assert dict_of_key_value_pairs(text) == {"K": value, "L": "x"}


def test_unrepresentable_environment_values_are_refused() -> None:
    with pytest.raises(ValueError, match="quotes"):
        env_value({"K": "both ' and \""})


def test_services_that_touch_datasets_share_the_tier_volume() -> None:
    """The gateway, the datamover and the workers see the same ``local`` and ``archive``
    directories (a job's inputs are uploaded by one and read by another)."""
    volumes = COMPOSE.get("volumes") or {}
    roots = set()
    for name in ("gateway", "datamover", "worker"):
        service = COMPOSE_SERVICES[name]
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", [])}
        env = environment_of(service)
        for var in ("STRATUS_STORAGE__LOCAL__ROOT", "STRATUS_STORAGE__ARCHIVE__ROOT"):
            root = env[var]
            roots.add(root)
            mount = next((m for m in mounts if root == m or root.startswith(m + "/")), None)
            assert mount is not None, (name, var, root)
            assert mounts[mount] in volumes, (name, mounts[mount])
            assert mounts[mount] == "stratus-data", (name, mount)
        assert depends_on(service)["data-init"] == "service_completed_successfully", name
    assert roots == {"/data/local", "/data/archive"}
