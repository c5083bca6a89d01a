"""`helm install`, `upgrade` and `uninstall` of charts/ray-pixi against a real kube-apiserver.

Runs on the cluster-in-a-box (tests/kube: etcd, kube-apiserver, KubeRay; no kubelet, so the
operator pod stays Pending and the webhook never answers). That is enough to show what only a
live API server shows: the API server accepts every object; `lookup` finds the installed TLS
Secret so an upgrade keeps the certificate; the operator's ServiceAccount gets exactly the
rights it needs; with failurePolicy Fail an unanswered webhook rejects opted-in RayClusters
only. The release runs in namespaced mode, so its webhook never touches other tests' namespaces.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
from chart_render import CHART_DIR
from ray_pixi_operator import names

from kube.cluster import KubeCluster
from kube.manifests import raycluster, wait_for_pods
from kube.rest import ApiError, poll

pytestmark = pytest.mark.apiserver

WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@pytest.fixture
def release(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[tuple[Any, str]]:
    config = helm_python.Config(
        kubeconfig_path=kube_cluster.admin_kubeconfig, namespace=kube_namespace
    )
    name = f"rp-{secrets.token_hex(3)}"
    try:
        yield config, name
    finally:
        config.uninstall(name, ignore_not_found=True)
        config.close()


def _access(rest: Any, namespace: str, group: str, resource: str, verb: str) -> bool:
    review = rest.create(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "group": group,
                    "resource": resource,
                    "verb": verb,
                }
            },
        },
    )
    return bool(review["status"].get("allowed"))


def test_install_upgrade_uninstall(kube_cluster, kube_namespace, release):
    config, name = release
    admin = kube_cluster.rest()
    values = {"namespaces": [kube_namespace]}
    fullname = f"{name}-ray-pixi"

    config.install(CHART_DIR, name, values, namespace=kube_namespace)
    secret_path = f"/api/v1/namespaces/{kube_namespace}/secrets/{fullname}-webhook-tls"
    installed_secret = admin.get(secret_path)["data"]
    webhook = admin.get(f"{WEBHOOKS}/{fullname}")["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == installed_secret["ca.crt"]

    # Upgrade with a changed value: it is applied, and the certificate is kept (lookup).
    config.upgrade(CHART_DIR, name, {**values, "logLevel": "DEBUG"}, namespace=kube_namespace)
    deployment = admin.get(f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/{fullname}")
    env = {
        e["name"]: e.get("value", "")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RAY_PIXI_LOG_LEVEL"] == "DEBUG"
    assert admin.get(secret_path)["data"] == installed_secret
    webhook = admin.get(f"{WEBHOOKS}/{fullname}")["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == installed_secret["ca.crt"]

    # The operator is not running (no kubelet): Fail rejects opted-in clusters, only those.
    clusters = kube_cluster.path_for("ray.io/v1", "RayCluster", kube_namespace)
    with pytest.raises(ApiError) as rejected:
        admin.create(
            clusters,
            raycluster("opted-in", labels={names.ENABLED_LABEL: names.ENABLED_VALUE}, workers=0),
        )
    assert "rayclusters.ray-pixi.io" in str(rejected.value)
    admin.create(clusters, raycluster("plain", workers=0))

    config.uninstall(name)
    assert not admin.exists(f"{WEBHOOKS}/{fullname}")
    assert not admin.exists(secret_path)
    admin.create(
        clusters,
        raycluster("after-uninstall", labels={names.ENABLED_LABEL: names.ENABLED_VALUE}, workers=0),
    )


def test_operator_service_account_has_exactly_the_rights_it_needs(
    kube_cluster, kube_namespace, release
):
    config, name = release
    config.install(CHART_DIR, name, {"namespaces": [kube_namespace]}, namespace=kube_namespace)
    token = kube_cluster.service_account_token(kube_namespace, f"{name}-ray-pixi")
    operator = kube_cluster.rest(token=token)
    for group, resource, verb in [
        ("ray.io", "rayclusters", "list"),
        ("ray.io", "rayclusters", "watch"),
        ("ray.io", "rayclusters", "patch"),
        ("", "pods", "list"),
        ("", "events", "create"),
    ]:
        assert _access(operator, kube_namespace, group, resource, verb), (resource, verb)
    for namespace, group, resource, verb in [
        (kube_namespace, "", "secrets", "get"),
        (kube_namespace, "", "pods", "delete"),
        (kube_namespace, "ray.io", "rayclusters", "delete"),
        ("default", "ray.io", "rayclusters", "list"),
    ]:
        assert not _access(operator, namespace, group, resource, verb), (namespace, resource, verb)


def test_failure_policy_ignore_admits_opted_in_clusters_unchanged(
    kube_cluster, kube_namespace, release
):
    config, name = release
    config.install(
        CHART_DIR,
        name,
        {
            "namespaces": [kube_namespace],
            "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 2},
        },
        namespace=kube_namespace,
    )
    clusters = kube_cluster.path_for("ray.io/v1", "RayCluster", kube_namespace)
    created = kube_cluster.rest().create(
        clusters,
        raycluster("opted-in", labels={names.ENABLED_LABEL: names.ENABLED_VALUE}, workers=0),
    )
    assert "initContainers" not in created["spec"]["headGroupSpec"]["template"]["spec"]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_installed_chart_injects_opted_in_clusters(kube_cluster, kube_namespace, release, tmp_path):
    """The chart's defaults end to end: its operator (run as its Deployment says, with its
    ServiceAccount's rights and its webhook certificate) answers its webhook configuration,
    and KubeRay builds the pods of an opted-in RayCluster with the payload init container."""
    config, name = release
    config.install(CHART_DIR, name, {"namespaces": [kube_namespace]}, namespace=kube_namespace)
    admin = kube_cluster.rest()
    fullname = f"{name}-ray-pixi"
    deployment = admin.get(f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/{fullname}")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}

    # What the pod would mount and where it would listen, moved to this machine.
    secret = admin.get(f"/api/v1/namespaces/{kube_namespace}/secrets/{fullname}-webhook-tls")
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    webhook_port, health_port = _free_port(), _free_port()
    env.update(
        {
            "RAY_PIXI_WEBHOOK_CERT_FILE": str(tmp_path / "tls.crt"),
            "RAY_PIXI_WEBHOOK_KEY_FILE": str(tmp_path / "tls.key"),
            "RAY_PIXI_WEBHOOK_PORT": str(webhook_port),
            "RAY_PIXI_HEALTH_PORT": str(health_port),
        }
    )
    token = kube_cluster.service_account_token(kube_namespace, fullname)
    kubeconfig = kube_cluster.kubeconfig_for_token(token, name="ray-pixi-operator")
    command = [
        str(Path(sys.executable).with_name(container["command"][0])),
        *container["command"][1:],
    ]
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_PIXI_")}
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        command,
        env={**proc_env, **env, "KUBECONFIG": str(kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service = f"{fullname}-webhook"
    kube_cluster.route_service(kube_namespace, service, 443, webhook_port)
    try:
        poll(
            lambda: _healthy(health_port),
            timeout=60,
            what=f"the operator's /healthz (log: {tmp_path / 'operator.log'})",
        )
        clusters = kube_cluster.path_for("ray.io/v1", "RayCluster", kube_namespace)
        created = admin.create(
            clusters,
            raycluster("opted-in", labels={names.ENABLED_LABEL: names.ENABLED_VALUE}, workers=1),
        )
        head = created["spec"]["headGroupSpec"]["template"]["spec"]
        (init,) = head["initContainers"]
        assert init["name"] == names.INIT_CONTAINER_NAME
        assert init["image"] == env["RAY_PIXI_PAYLOAD_IMAGE"] == container["image"]
        assert init["command"] == list(names.PAYLOAD_COMMAND)
        volume = {v["name"]: v for v in head["volumes"]}[names.VOLUME_NAME]
        assert volume["emptyDir"] == {"sizeLimit": "20Gi"}
        pods = wait_for_pods(admin, kube_namespace, "opted-in", 2)
        for pod in pods:
            inits = [c["name"] for c in pod["spec"].get("initContainers", [])]
            assert inits[0] == names.INIT_CONTAINER_NAME, inits
    finally:
        kube_cluster.unroute_service(kube_namespace, service, 443)
        operator.terminate()
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
    assert operator.returncode is not None


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False
