"""The Kubernetes manifests validate against the OpenAPI schemas of a current Kubernetes release.

``deploy/kubernetes`` is rendered as ``kubectl kustomize`` renders it (its resources, each
namespaced object in the kustomization's namespace) and every object of a built-in kind is
validated, strictly (no unknown field), with ``kubernetes-validate``'s schemas of its newest
release. KEDA's objects (a CRD, no schema there) are only counted. Where ``kubectl`` is on
PATH, its own rendering is checked to give the same objects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kubernetes"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


def rendered() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    namespace = kustomization.get("namespace")
    objects = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUSTOMIZE / resource).read_text()):
            if not doc:
                continue
            if namespace and doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
            objects.append(doc)
    return objects


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


OBJECTS = rendered()


def test_the_kustomization_renders_the_workloads() -> None:
    kinds = {obj["kind"] for obj in OBJECTS}
    assert {"Namespace", "ConfigMap", "Deployment", "Job"} <= kinds
    assert len({key(o) for o in OBJECTS}) == len(OBJECTS), "an object is defined twice"


@pytest.mark.parametrize(
    "obj", OBJECTS, ids=[f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS]
)
def test_every_object_validates_against_the_current_release(obj: dict[str, Any]) -> None:
    release = kubernetes_validate.latest_version()
    assert tuple(int(x) for x in release.split(".")[:2]) >= (1, 33)
    if obj["apiVersion"].startswith("keda.sh/"):
        assert obj["kind"] in {"ScaledObject", "ScaledJob", "TriggerAuthentication"}
        return
    kubernetes_validate.validate(obj, release, strict=True)


def test_a_field_the_schema_does_not_know_is_refused() -> None:
    deployment = next(o for o in OBJECTS if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kubectl_kustomize_renders_the_same_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    theirs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert sorted(map(key, theirs)) == sorted(map(key, OBJECTS))
