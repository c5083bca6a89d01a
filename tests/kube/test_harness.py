"""The cluster-in-a-box itself: API server, RBAC, tokens, and KubeRay building Pods."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from kube.cluster import KubeCluster
from kube.manifests import RAY_IMAGE, cluster_pods, raycluster, rayjob, wait_for_pods
from kube.pki import CertificateAuthority
from kube.rest import ApiError, poll

pytestmark = pytest.mark.apiserver


def test_kuberay_creates_pending_head_and_worker_pods(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """A RayCluster gets a head Pod and one Pod per worker replica, workers gated on GCS."""
    kube_cluster.apply(raycluster("plain", workers=2), kube_namespace)
    pods = wait_for_pods(kube_cluster.rest(), kube_namespace, "plain", 3)

    head, *workers = pods
    assert head["metadata"]["labels"]["ray.io/node-type"] == "head"
    assert [w["metadata"]["labels"]["ray.io/group"] for w in workers] == ["cpu", "cpu"]
    for pod in pods:
        assert pod["status"]["phase"] == "Pending"  # no scheduler, no kubelet
        assert pod["spec"]["containers"][0]["image"] == RAY_IMAGE
    for worker in workers:
        init = [c["name"] for c in worker["spec"]["initContainers"]]
        assert init == ["wait-gcs-ready"]


def test_rayjob_creates_its_raycluster(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """KubeRay turns a RayJob into a RayCluster carrying the job's labels, then its Pods."""
    admin = kube_cluster.rest()
    kube_cluster.apply(rayjob("job", labels={"team": "ml"}), kube_namespace)
    clusters_path = kube_cluster.path_for("ray.io/v1", "RayCluster", kube_namespace)
    clusters = poll(
        lambda: admin.get(clusters_path)["items"],
        timeout=60,
        what="the RayCluster of RayJob job",
    )
    assert len(clusters) == 1
    generated = clusters[0]
    assert generated["metadata"]["name"].startswith("job-")
    assert generated["metadata"]["labels"]["team"] == "ml"
    assert generated["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    wait_for_pods(admin, kube_namespace, generated["metadata"]["name"], 2)


def test_service_account_token_is_subject_to_rbac(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """A TokenRequest token authenticates as the ServiceAccount and RBAC decides what it may do."""
    kube_cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        kube_namespace,
    )
    token = kube_cluster.service_account_token(kube_namespace, "reader")
    as_reader = kube_cluster.rest(token=token)
    pods = f"/api/v1/namespaces/{kube_namespace}/pods"

    review = as_reader.create(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert review["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{kube_namespace}:reader"
    )
    with pytest.raises(ApiError) as denied:
        as_reader.get(pods)
    assert denied.value.status == 403

    kube_cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        kube_namespace,
    )
    kube_cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": kube_namespace}],
        },
        kube_namespace,
    )
    assert as_reader.get(pods)["items"] == []


def test_kubeconfigs_work_with_the_kubernetes_client(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """The admin client and a token kubeconfig both load in the official Python client."""
    from kubernetes import client, config

    with kube_cluster.api_client() as api:
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    assert kube_namespace in names

    kube_cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
        kube_namespace,
    )
    path = kube_cluster.kubeconfig_for_token(
        kube_cluster.service_account_token(kube_namespace, "nobody")
    )
    with (
        config.new_client_from_config(config_file=str(path)) as api,
        pytest.raises(client.ApiException) as denied,
    ):
        client.CoreV1Api(api).list_namespaced_pod(kube_namespace)
    assert denied.value.status == 403


def test_deleting_a_namespace_removes_its_ray_objects(kube_cluster: KubeCluster) -> None:
    """The harness's namespace cleanup leaves no RayCluster or Pod behind."""
    admin = kube_cluster.rest()
    namespace = kube_cluster.create_namespace("t-cleanup-check")
    try:
        kube_cluster.apply(raycluster("doomed", workers=1), namespace)
        wait_for_pods(admin, namespace, "doomed", 2)
    finally:
        kube_cluster.delete_namespace(namespace)
    assert not admin.exists(f"/api/v1/namespaces/{namespace}")
    assert cluster_pods(admin, namespace, "doomed") == []
    everywhere = admin.get("/apis/ray.io/v1/rayclusters")["items"]
    assert [c for c in everywhere if c["metadata"]["namespace"] == namespace] == []


class _LabellingWebhook(http.server.BaseHTTPRequestHandler):
    """A mutating webhook that labels every object it is sent `routed: "yes"`."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"routed": "yes"}}]
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_behind_a_service_is_reached_on_loopback(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    """A `service` clientConfig reaches a local server, over TLS for `<svc>.<ns>.svc`."""
    ca = CertificateAuthority(tmp_path, "webhook-ca")
    pair = ca.issue("hook", "hook", hosts=(f"hook.{kube_namespace}.svc",), server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_file, pair.key_file)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LabellingWebhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    name = f"label-configmaps-{kube_namespace}"
    try:
        kube_cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "hook"},
                "spec": {"ports": [{"port": 443, "targetPort": 8443}]},
            },
            kube_namespace,
        )
        kube_cluster.route_service(kube_namespace, "hook", 443, server.server_address[1])
        kube_cluster.apply(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "label.harness.test",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "clientConfig": {
                            "service": {"name": "hook", "namespace": kube_namespace},
                            "caBundle": base64.b64encode(ca.cert_pem).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "resources": ["configmaps"],
                                "operations": ["CREATE"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": kube_namespace}
                        },
                    }
                ],
            }
        )
        created = poll(
            lambda: _create_configmap(kube_cluster, kube_namespace),
            timeout=30,
            what="a ConfigMap admitted through the webhook",
        )
        assert created["metadata"]["labels"] == {"routed": "yes"}
    finally:
        kube_cluster.rest().delete(
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
            missing_ok=True,
        )
        kube_cluster.unroute_service(kube_namespace, "hook", 443)
        server.shutdown()
        server.server_close()


def _create_configmap(kube_cluster: KubeCluster, namespace: str) -> dict[str, Any] | None:
    # The webhook configuration takes effect a moment after it is stored; until then a
    # ConfigMap is created unlabelled, so try with dry-run first.
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}}
    trial = kube_cluster.rest().request("POST", path, body, params={"dryRun": "All"})
    if "routed" not in (trial["metadata"].get("labels") or {}):
        return None
    return dict(kube_cluster.rest().create(path, body))
