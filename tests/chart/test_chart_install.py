"""`helm install`, `upgrade` and `uninstall` of charts/ray-pixi against a real kube-apiserver.

Runs on the cluster-in-a-box (tests/kube: etcd, kube-apiserver, KubeRay; no kubelet, so the
operator pod stays Pending and the webhook never answers). That is enough to show what only a
live API server shows: the API server accepts every object; `lookup` finds the installed TLS
Secret so an upgrade keeps the certificate; the operator's ServiceAccount gets exactly the
rights it needs; with failurePolicy Fail an unanswered webhook rejects opted-in RayClusters
only. The release runs in namespaced mode, so its webhook never touches other tests' namespaces.
The chart's roles running against such a release are tests/node/test_chart_e2e.py's business.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest
from chart_render import CHART_DIR
from ray_pixi_operator import names

from kube.cluster import KubeCluster
from kube.manifests import raycluster
from kube.rest import ApiError

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
    # The API server kept the UPDATE webhook's CEL (it would drop a field it does not know).
    update = admin.get(f"{WEBHOOKS}/{fullname}")["webhooks"][1]
    assert [c["name"] for c in update["matchConditions"]] == [
        "not-being-deleted",
        "changes-templates-or-ray-pixi-annotations",
    ]

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
    assert "create.rayclusters.ray-pixi.io" in str(rejected.value)
    admin.create(clusters, raycluster("plain", workers=0))

    config.uninstall(name)
    assert not admin.exists(f"{WEBHOOKS}/{fullname}")
    assert not admin.exists(secret_path)
    admin.create(
        clusters,
        raycluster("after-uninstall", labels={names.ENABLED_LABEL: names.ENABLED_VALUE}, workers=0),
    )


def test_each_service_account_has_exactly_the_rights_it_needs(
    kube_cluster, kube_namespace, release
):
    config, name = release
    config.install(CHART_DIR, name, {"namespaces": [kube_namespace]}, namespace=kube_namespace)
    reconciler = kube_cluster.rest(
        token=kube_cluster.service_account_token(kube_namespace, f"{name}-ray-pixi-reconciler")
    )
    for group, resource, verb in [
        ("ray.io", "rayclusters", "list"),
        ("ray.io", "rayclusters", "watch"),
        ("ray.io", "rayclusters", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
    ]:
        assert _access(reconciler, kube_namespace, group, resource, verb), (resource, verb)
    for namespace, group, resource, verb in [
        (kube_namespace, "", "secrets", "get"),
        (kube_namespace, "", "pods", "delete"),
        (kube_namespace, "", "pods", "patch"),
        (kube_namespace, "ray.io", "rayclusters", "delete"),
        ("default", "ray.io", "rayclusters", "list"),
    ]:
        assert not _access(reconciler, namespace, group, resource, verb), (
            namespace,
            resource,
            verb,
        )
    # The webhook is sent the object by the API server: it may read and change nothing.
    webhook = kube_cluster.rest(
        token=kube_cluster.service_account_token(kube_namespace, f"{name}-ray-pixi")
    )
    for group, resource, verb in [
        ("ray.io", "rayclusters", "list"),
        ("ray.io", "rayclusters", "patch"),
        ("", "pods", "list"),
        ("", "events", "create"),
        ("", "secrets", "get"),
    ]:
        assert not _access(webhook, kube_namespace, group, resource, verb), (resource, verb)


def test_rotating_the_generated_certificate_keeps_trusting_the_served_one(
    kube_cluster, kube_namespace, release
):
    """Delete the Secret and upgrade: real Helm's lookup finds the live webhook configuration,
    and the new caBundle trusts both the certificate still being served and the new one."""
    from cryptography import x509

    config, name = release
    values = {"namespaces": [kube_namespace]}
    config.install(CHART_DIR, name, values, namespace=kube_namespace)
    admin = kube_cluster.rest()
    fullname = f"{name}-ray-pixi"
    secret_path = f"/api/v1/namespaces/{kube_namespace}/secrets/{fullname}-webhook-tls"
    old = admin.get(secret_path)["data"]
    admin.delete(secret_path)
    config.upgrade(CHART_DIR, name, values, namespace=kube_namespace)
    new = admin.get(secret_path)["data"]
    assert new["tls.crt"] != old["tls.crt"]
    bundles = {
        w["clientConfig"]["caBundle"] for w in admin.get(f"{WEBHOOKS}/{fullname}")["webhooks"]
    }
    (bundle,) = bundles
    subjects = [c.subject for c in x509.load_pem_x509_certificates(base64.b64decode(bundle))]
    issuers = [
        x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"])).issuer
        for data in (new, old)
    ]
    assert subjects == issuers  # the new CA first, then the one the webhook still serves from
    # A plain upgrade afterwards changes none of it.
    config.upgrade(CHART_DIR, name, {**values, "logLevel": "DEBUG"}, namespace=kube_namespace)
    assert admin.get(secret_path)["data"] == new
    assert {
        w["clientConfig"]["caBundle"] for w in admin.get(f"{WEBHOOKS}/{fullname}")["webhooks"]
    } == {bundle}


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
