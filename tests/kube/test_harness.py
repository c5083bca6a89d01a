"""The cluster-in-a-box itself: API server, RBAC, tokens, and KubeRay building Pods."""

from __future__ import annotations

import pytest

from kube.cluster import KubeCluster
from kube.manifests import RAY_IMAGE, cluster_pods, raycluster, rayjob, wait_for_pods
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
