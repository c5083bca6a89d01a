"""Realistic RayCluster and RayJob manifests, and readers for what KubeRay made of them.

Shaped like KubeRay's own samples (ray-cluster.complete.yaml, ray-job.sample.yaml): the
Ray container first, ports, resources, a user volume and mount, and a worker group with
min/max replicas, so tests can also check that nothing the user wrote is lost.
"""

from __future__ import annotations

import copy
from typing import Any

from .rest import Rest, poll

__all__ = [
    "NO_NODE",
    "RAY_IMAGE",
    "cluster_pods",
    "off_node",
    "raycluster",
    "raycluster_spec",
    "rayjob",
    "rayservice",
    "wait_for_pods",
]

RAY_IMAGE = "rayproject/ray:2.60.0"
RAY_API = "ray.io/v1"


def _container(name: str, cpu: str, memory: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": RAY_IMAGE,
        "ports": ports,
        "env": [{"name": "USER_SETTING", "value": "kept"}],
        "resources": {
            "limits": {"cpu": cpu, "memory": memory},
            "requests": {"cpu": cpu, "memory": memory},
        },
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }


def raycluster_spec(workers: int = 2) -> dict[str, Any]:
    """A RayCluster spec with a head group and one worker group `cpu`."""
    head = _container(
        "ray-head",
        "1",
        "2Gi",
        [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
    )
    worker = _container("ray-worker", "1", "1Gi", [])
    volumes = [{"name": "ray-logs", "emptyDir": {}}]
    return {
        "rayVersion": "2.60.0",
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/part-of": "ray-pixi-tests"}},
                "spec": {"containers": [head], "volumes": copy.deepcopy(volumes)},
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": workers,
                "minReplicas": 0,
                "maxReplicas": 10,
                "rayStartParams": {},
                "template": {"spec": {"containers": [worker], "volumes": copy.deepcopy(volumes)}},
            }
        ],
    }


def raycluster(
    name: str, *, labels: dict[str, str] | None = None, workers: int = 2
) -> dict[str, Any]:
    return {
        "apiVersion": RAY_API,
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": raycluster_spec(workers),
    }


def rayjob(name: str, *, labels: dict[str, str] | None = None, workers: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": RAY_API,
        "kind": "RayJob",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "entrypoint": "python -c 'import ray; ray.init(); print(ray.cluster_resources())'",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 60,
            "rayClusterSpec": raycluster_spec(workers),
        },
    }


def rayservice(
    name: str, *, labels: dict[str, str] | None = None, workers: int = 1
) -> dict[str, Any]:
    """A RayService shaped like KubeRay's ray-service.sample.yaml: one Serve app, a cluster."""
    return {
        "apiVersion": RAY_API,
        "kind": "RayService",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "serveConfigV2": (
                "applications:\n"
                "  - name: echo\n"
                "    import_path: echo.app\n"
                "    route_prefix: /\n"
            ),
            "rayClusterConfig": raycluster_spec(workers),
        },
    }


NO_NODE = {"ray-pixi.test/node": "none"}


def off_node(body: dict[str, Any]) -> dict[str, Any]:
    """`body` (RayCluster, RayJob or RayService) with a nodeSelector no node matches on every
    Pod template: KubeRay still builds its Pods (objects the API server admitted, defaulted
    and classed), the scheduler leaves them Pending and no sandbox starts."""
    spec = body["spec"]
    spec = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    templates = [spec["headGroupSpec"]["template"]]
    templates += [group["template"] for group in spec.get("workerGroupSpecs", [])]
    for template in templates:
        template["spec"]["nodeSelector"] = dict(NO_NODE)
    return body


def cluster_pods(rest: Rest, namespace: str, cluster: str) -> list[dict[str, Any]]:
    """The Pods KubeRay created for RayCluster `cluster`, head first."""
    pods = rest.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"ray.io/cluster={cluster}"
    )["items"]
    return sorted(
        pods,
        key=lambda p: (
            p["metadata"]["labels"].get("ray.io/node-type") != "head",
            p["metadata"]["name"],
        ),
    )


def wait_for_pods(
    rest: Rest, namespace: str, cluster: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """Poll until KubeRay has created exactly `count` Pods for `cluster`."""
    return poll(
        lambda: (pods := cluster_pods(rest, namespace, cluster)) and len(pods) == count and pods,
        timeout=timeout,
        what=f"{count} pods of RayCluster {namespace}/{cluster}",
        describe=lambda: str(
            [p["metadata"]["name"] for p in cluster_pods(rest, namespace, cluster)]
        ),
    )
