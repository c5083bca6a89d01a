"""Render charts/ray-pixi with the real Helm engine (helm-python-sdk) and index the objects."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from support import REPO

CHART_DIR = REPO / "charts" / "ray-pixi"
RELEASE = "ray-pixi"
NAMESPACE = "ray-system"

# Every values variant the chart supports, by name. Each must render, lint strictly and
# validate; the env of each must satisfy the operator's settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"namespaces": ["ml-team-a", "ml-team-b"]},
    "cert-manager": {"webhook": {"tls": {"certManager": {"enabled": True}}}},
    "cert-manager-cluster-issuer": {
        "webhook": {
            "tls": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                    "duration": "2160h",
                }
            }
        }
    },
    "cache-emptydir-unlimited": {"injection": {"cache": {"volume": "emptyDir", "sizeLimit": ""}}},
    "cache-hostpath": {
        "injection": {"cache": {"volume": "hostPath", "hostPath": "/mnt/nvme/ray-pixi"}}
    },
    "cache-pvc": {
        "injection": {"cache": {"volume": "persistentVolumeClaim", "pvcName": "ray-pixi-cache"}}
    },
    "failure-ignore": {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 3}},
    "pinned": {
        "image": {
            "repository": "registry.example.com/ml/ray-pixi",
            "tag": "0.1.0",
            "digest": "sha256:" + "ab" * 32,
        },
        "injection": {
            "pixiVersion": "0.77.0",
            "payloadImage": {"repository": "registry.example.com/ml/ray-pixi-payload", "tag": "7"},
        },
        "logLevel": "DEBUG",
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "bring-your-own-rbac": {
        "serviceAccount": {"create": False, "name": "ops"},
        "rbac": {"create": False},
    },
    "bring-your-own-tls": {
        "webhook": {
            "tls": {
                "existingSecret": "corp-webhook-tls",
                # Any base64 passes the chart; tests that dial the webhook bring a real CA.
                "caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
            }
        }
    },
    "one-webhook-replica-no-reconciler": {
        "webhook": {"replicas": 1},
        "reconciler": {"enabled": False},
    },
}


def _helm() -> Any:
    import helm_python

    return helm_python


@functools.lru_cache(maxsize=1)
def chart() -> Any:
    return _helm().Chart.load(CHART_DIR)


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    chart_obj: Any = None,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    upgrade: bool = False,
) -> dict[str, str]:
    """{template path: rendered text} as `helm install` (or `upgrade`) would render it."""
    target = chart_obj if chart_obj is not None else chart()
    return target.render(
        copy.deepcopy(values or {}),
        name=name,
        namespace=namespace,
        is_install=not upgrade,
        is_upgrade=upgrade,
    )


@functools.lru_cache(maxsize=64)
def _render_cached(key: str) -> tuple[dict[str, Any], ...]:
    return tuple(objects_of(render_raw(json.loads(key))))


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (deep copies, so tests may change them)."""
    return copy.deepcopy(list(_render_cached(json.dumps(values or {}, sort_keys=True))))


# The chart's one reading of the server version (whether matchConditions are supported).
KUBE_VERSION_CALL = 'semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version'


@functools.lru_cache(maxsize=8)
def chart_for_kube(version: str) -> Any:
    """The chart as a server reporting Kubernetes ``version`` renders it.

    Offline rendering reports helm's built-in version; `helm install` reports the server's. A
    copy of the chart whose one version check reads ``version`` instead shows what an older
    server gets (the copy lives in a temporary directory, removed when the session ends).
    """
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ray-pixi-chart-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    copy_dir = root / "ray-pixi"
    shutil.copytree(CHART_DIR, copy_dir)
    helpers = copy_dir / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    assert text.count(KUBE_VERSION_CALL) == 1, "the chart's version check moved"
    helpers.write_text(text.replace(KUBE_VERSION_CALL, f'semverCompare ">=1.28.0-0" "v{version}"'))
    return _helm().Chart.load(copy_dir)


def render_for_kube(values: dict[str, Any] | None, version: str) -> list[dict[str, Any]]:
    return objects_of(render_raw(values, chart_obj=chart_for_kube(version)))


def objects_of(manifests: dict[str, str]) -> list[dict[str, Any]]:
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["metadata"]["annotations"]["x-template"] = path
                objects.append(doc)
    return objects


def strip_marks(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the x-template mark `objects_of` adds (as the cluster would see it)."""
    clean = copy.deepcopy(obj)
    annotations = clean["metadata"]["annotations"]
    annotations.pop("x-template", None)
    if not annotations:
        del clean["metadata"]["annotations"]
    return clean


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def deployment_of(objects: Iterable[dict[str, Any]], role: str) -> dict[str, Any]:
    """The Deployment of one role: "webhook" or "reconciler"."""
    found = [
        o
        for o in of_kind(objects, "Deployment")
        if o["metadata"]["labels"].get("ray-pixi.io/role") == role
    ]
    assert len(found) == 1, f"expected one {role} Deployment, got {len(found)}"
    return found[0]


def deployments(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(objects, "Deployment")


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = container["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    assert all("valueFrom" not in e for e in env)
    return {e["name"]: e["value"] for e in env}


def chart_path() -> Path:
    return CHART_DIR
