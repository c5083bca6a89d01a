"""A prepared cluster through its whole life, on the real node with KubeRay (v1.6.2, with the
v1.7.0 CRDs): chart upgrades and rollbacks, RayService updates, webhook outages, the drain,
certificate rotation, settings that turn a cluster's annotations invalid, 0.1.0 clusters, old
Ray images, GitOps.

Each test installs the chart with real Helm into its own namespace (namespaced mode, so its
webhook sees nothing else); its webhook and reconciler are the chart's own Pods, running the
add-on's image of this checkout under the names the test installs it with
(`registry.example.com/ml/ray-pixi:<tag>`, tagged and imported by `chart_images`). An upgrade
or rollback is the Deployments' real rollout; an outage is the webhook Deployment scaled to
0 until its Service has no endpoints. The Ray clusters' Pods are objects only (KubeRay builds
them; a nodeSelector no node matches keeps them Pending). What is asserted is what a user
sees: pod UIDs, stored templates compared as text, which patches the API server accepts or
refuses and with which message, events, the webhook Pods' images and logs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kube.cluster import KubeCluster
from kube.manifests import cluster_pods, off_node, wait_for_pods
from kube.manifests import raycluster as _raycluster
from kube.manifests import rayservice as _rayservice
from kube.release import Release, install_release
from kube.rest import ApiError, Rest, poll

pytestmark = pytest.mark.node

LABELS = {"ray-pixi.io/enabled": "true"}
RECORD = "ray-pixi.io/injection"
STATUS = "ray-pixi.io/status"
PAYLOAD = "ray-pixi-payload"
IMAGE = "registry.example.com/ml/ray-pixi"
SETTLE = 60
# The kubelet refreshes a mounted Secret on its sync period (about a minute) plus its cache TTL.
KUBELET_SYNC = 150
MANIFESTS = Path(__file__).resolve().parents[1] / "operator" / "manifests"


def raycluster(name: str, **kw: Any) -> dict[str, Any]:
    """A RayCluster whose Pods stay objects (Pending, off the node): these tests read specs."""
    return off_node(_raycluster(name, **kw))


def rayservice(name: str, **kw: Any) -> dict[str, Any]:
    return off_node(_rayservice(name, **kw))


def chart_values(namespace: str, more: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values each test installs (or upgrades) with, `more` merged in: this namespace
    only, the payload `IMAGE:0.2.0`, one webhook replica with a short drain (two cores)."""
    values: dict[str, Any] = {
        "namespaces": [namespace],
        "image": {"repository": IMAGE, "tag": "0.2.0"},
        "webhook": {"replicas": 1, "drainSeconds": 2},
    }
    for key, value in (more or {}).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def pod_images(release: Release, role: str) -> set[str]:
    """The images the role's Pods run (what the kubelet started)."""
    return {c["image"] for p in release.roles[role].pods() for c in p["spec"]["containers"]}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def make_release(kube_node: KubeCluster, node_namespace: str) -> Iterator[Callable[..., Release]]:
    """Install the chart for this test's namespace (with more values), its Pods rolled out."""
    made: list[Release] = []

    def make(values: dict[str, Any] | None = None, *, start: bool = True) -> Release:
        release = install_release(
            kube_node,
            name="rp",
            namespace=node_namespace,
            values=chart_values(node_namespace, values),
            create_namespace=False,
            start=start,
        )
        made.append(release)
        return release

    yield make
    for release in made:
        release.uninstall()


# --- reading what the API server holds --------------------------------------------------------


def clusters_path(cluster: KubeCluster, namespace: str, name: str = "") -> str:
    path = cluster.path_for("ray.io/v1", "RayCluster", namespace)
    return f"{path}/{name}" if name else path


def get_cluster(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.rest().get(clusters_path(cluster, namespace, name)))


def templates_text(body: dict[str, Any]) -> str:
    """The stored pod templates as canonical JSON text: 'byte-identical' means equal text."""
    spec = body["spec"]
    templates = [spec["headGroupSpec"]["template"]]
    templates += [group["template"] for group in spec.get("workerGroupSpecs", [])]
    return json.dumps(templates, sort_keys=True, separators=(",", ":"))


def uids(admin: Rest, namespace: str, name: str) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster_pods(admin, namespace, name)
    }


def events(admin: Rest, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = admin.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e["involvedObject"].get("name") == name and e["reason"] == reason]


def wait_event(
    release: Release, namespace: str, name: str, reason: str, after: int = 0
) -> dict[str, Any]:
    """The newest `reason` event about `name`, once there are more than `after` of them."""
    found = poll(
        lambda: (e := events(release.admin, namespace, name, reason)) and len(e) > after and e,
        timeout=SETTLE,
        what=f"a {reason} event for {name}",
        describe=lambda: release.reconciler.log()[-2000:],
    )
    return dict(sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])[-1])


def scale(cluster: KubeCluster, namespace: str, name: str, replicas: int) -> None:
    """What the Ray autoscaler does: a JSON patch of one worker group's replicas."""
    cluster.rest().json_patch(
        clusters_path(cluster, namespace, name),
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": replicas}],
    )


def synced_with_kuberay(
    cluster: KubeCluster, namespace: str, name: str, replicas: int
) -> list[dict[str, Any]]:
    """Scale the first worker group up by one and wait for KubeRay to build the new pod: proof
    that KubeRay reconciled the cluster as it is now (with Recreate, it compares the spec hash
    first and would have deleted every pod instead)."""
    count = len(cluster_pods(cluster.rest(), namespace, name))
    scale(cluster, namespace, name, replicas)
    return wait_for_pods(cluster.rest(), namespace, name, count + 1, timeout=SETTLE)


def init_images(pod: dict[str, Any]) -> list[str]:
    return [c["image"] for c in pod["spec"].get("initContainers", []) if c["name"] == PAYLOAD]


def operator_cli(cluster: KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`ray-pixi-operator ARGS` as an admin runs it on their machine, with the admin's
    kubeconfig (the CLI beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "ray-pixi-operator"
    executable = str(beside) if beside.exists() else shutil.which("ray-pixi-operator")
    assert executable is not None, "no ray-pixi-operator executable (pip install -e operator)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_PIXI_")}
    return subprocess.run(
        [executable, *args],
        env={**env, "KUBECONFIG": str(cluster.admin_kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- upgrades ------------------------------------------------------------------------------------


def test_helm_upgrade_and_rollback_leave_a_recreate_cluster_alone_until_it_is_migrated(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    ns, admin = node_namespace, kube_node.rest()
    release = make_release({"image": {"repository": IMAGE, "tag": "0.1.0"}})
    body = raycluster("recreate", labels=LABELS, workers=1)
    body["spec"]["upgradeStrategy"] = {"type": "Recreate"}
    kube_node.apply(body, ns)
    prepared = get_cluster(kube_node, ns, "recreate")
    before = templates_text(prepared)
    pods = wait_for_pods(admin, ns, "recreate", 2)
    # KubeRay guards this cluster with Recreate: its head pod carries the spec hash.
    head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    assert head["metadata"]["annotations"]["ray.io/upgrade-strategy-recreate-hash"]
    assert {tuple(init_images(p)) for p in pods} == {(f"{IMAGE}:0.1.0",)}
    original = uids(admin, ns, "recreate")
    wait_event(release, ns, "recreate", "RayPixiInjected")

    assert pod_images(release, "webhook") == pod_images(release, "reconciler") == {
        f"{IMAGE}:0.1.0"
    }

    # A new payload tag and a changed setting: both Deployments roll out, old Pods gone.
    release.upgrade(
        chart_values(
            ns,
            {
                "image": {"repository": IMAGE, "tag": "0.2.0"},
                "injection": {"pixiVersion": "0.77.0", "cache": {"pluginCacheSizeGB": 20}},
            },
        )
    )
    assert release.webhook.env()["RAY_PIXI_PAYLOAD_IMAGE"] == f"{IMAGE}:0.2.0"
    assert pod_images(release, "webhook") == pod_images(release, "reconciler") == {
        f"{IMAGE}:0.2.0"
    }
    pinned = wait_event(release, ns, "recreate", "RayPixiPayloadPinned")
    assert pinned["type"] == "Normal"
    assert f"{IMAGE}:0.1.0 (now {IMAGE}:0.2.0)" in pinned["message"]
    assert "delete" not in pinned["message"]
    pods = synced_with_kuberay(kube_node, ns, "recreate", 2)
    assert templates_text(get_cluster(kube_node, ns, "recreate")) == before
    assert original.items() <= uids(admin, ns, "recreate").items()
    assert {tuple(init_images(p)) for p in pods} == {(f"{IMAGE}:0.1.0",)}
    # New clusters get the new payload.
    probe = raycluster("probe", labels=LABELS, workers=0)
    created = admin.request(
        "POST", clusters_path(kube_node, ns), probe, params={"dryRun": "All"}
    )
    assert init_images(created["spec"]["headGroupSpec"]["template"]) == [f"{IMAGE}:0.2.0"]

    # Moving it is explicit: list by payload, migrate, and KubeRay's Recreate rebuilds the pods.
    listing = operator_cli(kube_node, "clusters", "list", "-n", ns)
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if " recreate " in f" {line} "]
    assert f"{IMAGE}:0.1.0" in row
    migrated = operator_cli(kube_node, "clusters", "migrate", "-n", ns, "recreate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert f"{ns}/recreate: migrated from {IMAGE}:0.1.0 to {IMAGE}:0.2.0" in migrated.stdout
    rebuilt = poll(
        lambda: (
            (pods := cluster_pods(admin, ns, "recreate"))
            and len(pods) == 3
            and not set(uids(admin, ns, "recreate").values()) & set(original.values())
            and all(init_images(p) == [f"{IMAGE}:0.2.0"] for p in pods)
            and pods
        ),
        timeout=SETTLE,
        what="KubeRay to recreate the migrated cluster's pods with the new payload",
        describe=lambda: str(uids(admin, ns, "recreate")),
    )
    assert len(rebuilt) == 3
    after_migration = templates_text(get_cluster(kube_node, ns, "recreate"))
    assert after_migration != before

    # helm rollback (to 0.1.0) leaves the migrated cluster as it is too.
    moved = uids(admin, ns, "recreate")
    release.rollback(1)
    assert release.webhook.env()["RAY_PIXI_PAYLOAD_IMAGE"] == f"{IMAGE}:0.1.0"
    assert pod_images(release, "webhook") == {f"{IMAGE}:0.1.0"}
    wait_event(release, ns, "recreate", "RayPixiPayloadPinned", after=1)
    synced_with_kuberay(kube_node, ns, "recreate", 3)
    assert templates_text(get_cluster(kube_node, ns, "recreate")) == after_migration
    assert moved.items() <= uids(admin, ns, "recreate").items()


def test_a_cluster_prepared_by_0_1_0_is_adopted_unchanged(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """No record: the reconciler writes one from what the templates carry, nothing else."""
    import yaml

    ns, admin = node_namespace, kube_node.rest()
    legacy = yaml.safe_load((MANIFESTS / "raycluster-prepared-by-0.1.0.yaml").read_text())
    legacy["metadata"] = {"name": "legacy", "labels": dict(LABELS)}
    del legacy["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    for group in legacy["spec"]["workerGroupSpecs"]:
        group["replicas"] = 1
    legacy["spec"]["upgradeStrategy"] = {"type": "Recreate"}
    # Stored as 0.1.0 left it: no ray-pixi webhook serves this namespace yet.
    kube_node.apply(off_node(copy.deepcopy(legacy)), ns)
    stored = get_cluster(kube_node, ns, "legacy")
    before = templates_text(stored)
    wait_for_pods(admin, ns, "legacy", 3)
    original = uids(admin, ns, "legacy")

    release = make_release({"image": {"repository": IMAGE, "tag": "0.2.0"}})
    adopted = wait_event(release, ns, "legacy", "RayPixiAdopted")
    assert adopted["type"] == "Normal" and "ray-pixi-operator 0.1.0" in adopted["message"]
    body = get_cluster(kube_node, ns, "legacy")
    record = json.loads(body["metadata"]["annotations"][RECORD])
    assert record["adopted"] is True
    assert record["settings"]["payloadImage"] == "ghcr.io/example/ray-pixi:0.1.0"
    synced_with_kuberay(kube_node, ns, "legacy", 2)
    assert templates_text(get_cluster(kube_node, ns, "legacy")) == before
    assert original.items() <= uids(admin, ns, "legacy").items()


def test_a_rayservice_that_replaces_its_clusters_spec_keeps_the_injection(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """KubeRay rebuilds a RayService's RayCluster object from the RayService (spec, labels
    and annotations replaced) when a worker group is appended: once with the webhook up, once
    with it down (then the reconciler restores it from the record it remembers)."""
    ns, admin = node_namespace, kube_node.rest()
    release = make_release()
    service = rayservice("serve", labels=LABELS, workers=1)
    kube_node.apply(copy.deepcopy(service), ns)
    (cluster,) = poll(
        lambda: admin.get(clusters_path(kube_node, ns))["items"],
        timeout=SETTLE,
        what="the RayService's RayCluster",
    )
    name = cluster["metadata"]["name"]
    before = templates_text(cluster)
    record = cluster["metadata"]["annotations"][RECORD]
    assert PAYLOAD in before

    def append_group(group_name: str) -> dict[str, Any]:
        current = admin.get(kube_node.path_for("ray.io/v1", "RayService", ns, "serve"))
        group = copy.deepcopy(current["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])
        group["groupName"] = group_name
        current["spec"]["rayClusterConfig"]["workerGroupSpecs"].append(group)
        admin.replace(kube_node.path_for("ray.io/v1", "RayService", ns, "serve"), current)
        return poll(
            lambda: (
                (c := get_cluster(kube_node, ns, name))
                and [g["groupName"] for g in c["spec"]["workerGroupSpecs"]][-1] == group_name
                and PAYLOAD in templates_text(c)
                and RECORD in c["metadata"].get("annotations", {})
                and len(
                    [
                        g
                        for g in c["spec"]["workerGroupSpecs"]
                        if PAYLOAD in json.dumps(g["template"])
                    ]
                )
                == len(c["spec"]["workerGroupSpecs"])
                and c
            ),
            timeout=SETTLE,
            what=f"KubeRay to rebuild {name} with worker group {group_name}, injected",
            describe=lambda: json.dumps(get_cluster(kube_node, ns, name)["metadata"]),
        )

    def old_templates(body: dict[str, Any], groups: int) -> str:
        trimmed = copy.deepcopy(body)
        trimmed["spec"]["workerGroupSpecs"] = trimmed["spec"]["workerGroupSpecs"][:groups]
        return templates_text(trimmed)

    # Webhook up: the UPDATE's old object holds the record; the new object gets it back.
    updated = append_group("cpu-2")
    # KubeRay did rebuild the object from the RayService: its own annotations say so.
    assert updated["metadata"]["annotations"]["ray.io/num-worker-groups"] == "2"
    assert old_templates(updated, 1) == before
    assert updated["metadata"]["annotations"][RECORD] == record
    assert not events(admin, ns, name, "RayPixiRepaired")

    # Webhook down: the update passes without the injection (UPDATEs fail open) ...
    two_groups = templates_text(updated)
    release.webhook.stop()
    current = admin.get(kube_node.path_for("ray.io/v1", "RayService", ns, "serve"))
    group = copy.deepcopy(current["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])
    group["groupName"] = "cpu-3"
    current["spec"]["rayClusterConfig"]["workerGroupSpecs"].append(group)
    admin.replace(kube_node.path_for("ray.io/v1", "RayService", ns, "serve"), current)
    # ... and the reconciler puts back what it lost, from the record it remembers.
    repaired = wait_event(release, ns, name, "RayPixiRepaired")
    assert "its injection record" in repaired["message"]
    restored = get_cluster(kube_node, ns, name)
    assert [g["groupName"] for g in restored["spec"]["workerGroupSpecs"]] == [
        "cpu",
        "cpu-2",
        "cpu-3",
    ]
    assert old_templates(restored, 2) == two_groups
    assert restored["metadata"]["annotations"][RECORD] == record
    assert PAYLOAD in json.dumps(restored["spec"]["workerGroupSpecs"][2]["template"])


# --- outages, and settings that turn a cluster invalid -------------------------------------


def _deleting(kube_node: KubeCluster, ns: str, name: str) -> str:
    """Give `name` a finalizer (as KubeRay's GCS fault tolerance does), then delete it."""
    path = clusters_path(kube_node, ns, name)
    admin = kube_node.rest()
    admin.merge_patch(path, {"metadata": {"finalizers": ["ray.io/gcs-ft-redis-cleanup-finalizer"]}})
    admin.delete(path)
    assert get_cluster(kube_node, ns, name)["metadata"]["deletionTimestamp"]
    return path


def _finalize(kube_node: KubeCluster, path: str) -> None:
    """What KubeRay does once its cleanup Job finished (no Job controller runs here)."""
    admin = kube_node.rest()
    admin.json_patch(path, [{"op": "remove", "path": "/metadata/finalizers"}])
    poll(lambda: not admin.exists(path), timeout=SETTLE, what=f"{path} to be gone")


def _operations_go_through(kube_node: KubeCluster, ns: str, prefix: str) -> None:
    """A replica patch and a finalizer removal on a deleting cluster: both succeed."""
    scale(kube_node, ns, f"{prefix}-scaled", 3)
    assert (
        get_cluster(kube_node, ns, f"{prefix}-scaled")["spec"]["workerGroupSpecs"][0]["replicas"]
        == 3
    )
    _finalize(kube_node, _deleting(kube_node, ns, f"{prefix}-deleting"))


def test_with_the_webhook_down_clusters_keep_working_and_only_creates_fail(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    ns, admin = node_namespace, kube_node.rest()
    release = make_release()
    for name in ("down-scaled", "down-deleting", "down-replaced"):
        kube_node.apply(raycluster(name, labels=LABELS, workers=1), ns)
    prepared = get_cluster(kube_node, ns, "down-replaced")
    wait_event(release, ns, "down-replaced", "RayPixiInjected")
    release.webhook.stop()

    _operations_go_through(kube_node, ns, "down")
    with pytest.raises(ApiError) as refused:
        admin.create(clusters_path(kube_node, ns), raycluster("down-new", labels=LABELS))
    assert refused.value.status == 500
    assert 'failed calling webhook "create.rayclusters.ray-pixi.io"' in str(refused.value)
    admin.create(clusters_path(kube_node, ns), raycluster("down-plain"))  # not opted in

    # kubectl apply on a custom resource sends a merge patch: it replaces whole lists. The
    # UPDATE passes without the webhook; the reconciler repairs it from the record.
    plain_groups = raycluster("x", workers=1)["spec"]["workerGroupSpecs"]
    admin.merge_patch(
        clusters_path(kube_node, ns, "down-replaced"),
        {"spec": {"workerGroupSpecs": plain_groups}},
    )
    repaired = wait_event(release, ns, "down-replaced", "RayPixiRepaired")
    assert "workerGroupSpecs[cpu]" in repaired["message"]
    assert templates_text(get_cluster(kube_node, ns, "down-replaced")) == templates_text(
        prepared
    )


def test_a_cluster_made_invalid_by_new_settings_keeps_working(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """Prepared with a size limit for its emptyDir; then the operator moves to hostPath, for
    which that annotation is invalid. Operations go through with the webhook up or down."""
    ns, admin = node_namespace, kube_node.rest()
    release = make_release()
    names_ = ("up-scaled", "up-deleting", "up-edited", "down-scaled", "down-deleting")
    for name in names_:
        body = raycluster(name, labels=LABELS, workers=1)
        body["metadata"]["annotations"] = {"ray-pixi.io/cache-size-limit": "10Gi"}
        kube_node.apply(body, ns)
    before = templates_text(get_cluster(kube_node, ns, "up-edited"))
    release.upgrade(chart_values(ns, {"injection": {"cache": {"volume": "hostPath"}}}))
    warned = wait_event(release, ns, "up-edited", "RayPixiAnnotationsInvalid")
    assert warned["type"] == "Warning" and "ray-pixi.io/cache-size-limit" in warned["message"]

    _operations_go_through(kube_node, ns, "up")
    # Even an edit of a template is admitted (with a warning), and keeps what was injected.
    path = clusters_path(kube_node, ns, "up-edited")
    edited = admin.json_patch(
        path,
        [
            {
                "op": "add",
                "path": "/spec/workerGroupSpecs/0/template/metadata",
                "value": {"labels": {"team": "vision"}},
            }
        ],
    )
    assert PAYLOAD in templates_text(edited)
    assert "emptyDir" in json.dumps(edited["spec"]["headGroupSpec"]["template"]["spec"]["volumes"])
    assert before != templates_text(edited)  # the user's change is in

    release.webhook.stop()
    _operations_go_through(kube_node, ns, "down")


# --- what the API server does with the chart's UPDATE filter ------------------------------------


def test_the_charts_match_conditions_send_the_webhook_exactly_the_updates_that_matter(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """The chart's CEL, evaluated by kube-apiserver 1.36, against the operator's own rule.

    A probe webhook with the chart's matchConditions, failurePolicy Fail and nobody listening
    refuses exactly the UPDATEs the API server would send the webhook; the operator's Python
    twin (`needs_admission`, its filter on servers without CEL) must say the same for each.
    """
    from ray_pixi_operator.admission import needs_admission

    from kube.cluster import free_port

    ns, admin = node_namespace, kube_node.rest()
    release = make_release(start=False)
    (_, update) = release.webhook_configuration["webhooks"]
    probe_label = {"ray-pixi.test/cel-probe": ns}
    webhooks = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    name = f"cel-probe-{ns}"[:63]
    admin.create(
        webhooks,
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    **{
                        k: update[k]
                        for k in (
                            "rules",
                            "matchConditions",
                            "admissionReviewVersions",
                            "sideEffects",
                            "matchPolicy",
                        )
                    },
                    "name": "cel-probe.ray-pixi.io",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 2,
                    "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/nobody"},
                    "objectSelector": {"matchLabels": probe_label},
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                }
            ],
        },
    )
    try:
        # Not opted in: only the probe webhook (and not the chart's) sees this cluster.
        base = raycluster("cel", labels=probe_label, workers=1)
        base["metadata"]["annotations"] = {RECORD: "{}", "ray-pixi.io/migrate": "1"}
        path = clusters_path(kube_node, ns, "cel")
        admin.create(clusters_path(kube_node, ns), base)
        worker_env = "/spec/workerGroupSpecs/0/template/spec/containers/0/env"
        cases: dict[str, list[dict[str, Any]]] = {
            "replicas": [
                {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2}
            ],
            "suspend": [{"op": "add", "path": "/spec/suspend", "value": True}],
            "finalizer": [{"op": "add", "path": "/metadata/finalizers", "value": ["x.io/hold"]}],
            "label": [{"op": "add", "path": "/metadata/labels/team", "value": "vision"}],
            "other annotation": [
                {"op": "add", "path": "/metadata/annotations/team.io~1owner", "value": "ml"}
            ],
            "reconciler's status": [
                {"op": "add", "path": "/metadata/annotations/ray-pixi.io~1status", "value": "x"}
            ],
            "reconciler's reported": [
                {"op": "add", "path": "/metadata/annotations/ray-pixi.io~1reported", "value": "x"}
            ],
            "worker template": [
                {"op": "add", "path": f"{worker_env}/-", "value": {"name": "A", "value": "1"}}
            ],
            "head template": [
                {
                    "op": "add",
                    "path": "/spec/headGroupSpec/template/spec/nodeSelector",
                    "value": {"pool": "gpu"},
                }
            ],
            "a worker group appended": [
                {
                    "op": "add",
                    "path": "/spec/workerGroupSpecs/-",
                    "value": {**base["spec"]["workerGroupSpecs"][0], "groupName": "more"},
                }
            ],
            "migrate changed": [
                {
                    "op": "replace",
                    "path": "/metadata/annotations/ray-pixi.io~1migrate",
                    "value": "2",
                }
            ],
            "record removed": [
                {"op": "remove", "path": "/metadata/annotations/ray-pixi.io~1injection"}
            ],
            "ray-pixi annotation added": [
                {
                    "op": "add",
                    "path": "/metadata/annotations/ray-pixi.io~1pixi-version",
                    "value": "0.77.0",
                }
            ],
        }
        import jsonpatch

        seen = {}
        for case, operations in cases.items():
            old = get_cluster(kube_node, ns, "cel")
            new = jsonpatch.apply_patch(old, operations)
            try:
                admin.json_patch(path, operations)
                called = False
            except ApiError as error:
                assert 'failed calling webhook "cel-probe.ray-pixi.io"' in str(error), error
                called = True
            seen[case] = (called, needs_admission(new, old))
        # An object being deleted: even a template change never reaches the webhook.
        admin.delete(path)
        old = get_cluster(kube_node, ns, "cel")
        operations = [
            {"op": "add", "path": f"{worker_env}/-", "value": {"name": "B", "value": "2"}}
        ]
        new = jsonpatch.apply_patch(old, operations)
        try:
            admin.json_patch(path, operations)
            called = False
        except ApiError:
            called = True
        seen["template change while deleting"] = (called, needs_admission(new, old))
        admin.json_patch(path, [{"op": "remove", "path": "/metadata/finalizers"}])
    finally:
        admin.delete(f"{webhooks}/{name}", missing_ok=True)
    expected_calls = {
        "worker template",
        "head template",
        "a worker group appended",
        "migrate changed",
        "record removed",
        "ray-pixi annotation added",
    }
    assert {case for case, (called, _) in seen.items() if called} == expected_calls, seen
    assert {case: python for case, (_, python) in seen.items()} == {
        case: called for case, (called, _) in seen.items()
    }, "the operator's needs_admission disagrees with the API server's CEL"


# --- the compatibility gate ----------------------------------------------------------------------


def test_a_cluster_declaring_an_old_ray_is_refused_at_create_naming_the_range(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    ns, admin = node_namespace, kube_node.rest()
    make_release()
    old = raycluster("old-ray", labels=LABELS, workers=0)
    old["spec"]["rayVersion"] = "2.9.0"
    with pytest.raises(ApiError) as refused:
        admin.create(clusters_path(kube_node, ns), old)
    assert refused.value.status == 422
    message = refused.value.body["message"]
    assert 'admission webhook "create.rayclusters.ray-pixi.io" denied the request' in message
    assert "spec.rayVersion is '2.9.0'" in message
    assert "Ray >= 2.10, Python >= 3.10, pydantic >= 2.5" in message
    # An admin who knows the image runs a supported Ray vouches for it.
    old["metadata"]["annotations"] = {"ray-pixi.io/ray-version": "2.60.0"}
    created = admin.create(clusters_path(kube_node, ns), old)
    assert PAYLOAD in templates_text(created)


# --- GitOps: what Argo CD's and Flux's server-side dry runs see ----------------------------------


def _apply(
    admin: Rest, path: str, manifest: dict[str, Any], manager: str, *, dry_run: bool
) -> dict[str, Any]:
    """A server-side apply as Argo CD (ServerSideApply/ServerSideDiff) and Flux send it."""
    import yaml

    params = {"fieldManager": manager, "force": "true"}
    if dry_run:
        params["dryRun"] = "All"
    return dict(
        admin.request(
            "PATCH",
            path,
            yaml.safe_dump(manifest).encode(),
            params=params,
            content_type="application/apply-patch+yaml",
        )
    )


def test_gitops_server_side_dry_run_sees_the_injection(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """Argo CD (ServerSideDiff=true, IncludeMutationWebhook=true) and Flux diff a server-side
    apply dry run of the Git manifest against the live object. Applied by their field
    managers, the dry run of the unchanged manifest equals the live object (no drift), and the
    dry run of a changed manifest differs from it by exactly the change, injection kept."""
    ns, admin = node_namespace, kube_node.rest()
    make_release()
    for manager, name in (("argocd-controller", "argo"), ("kustomize-controller", "flux")):
        manifest = raycluster(name, labels=LABELS, workers=1)
        manifest["metadata"]["namespace"] = ns
        path = clusters_path(kube_node, ns, name)
        applied = _apply(admin, path, manifest, manager, dry_run=False)
        assert PAYLOAD in templates_text(applied)  # the webhook prepared it at CREATE
        live = get_cluster(kube_node, ns, name)
        # What the webhook added is owned by no field manager: the GitOps tool's next apply,
        # which leaves it out, never removes it.
        (owned,) = [m for m in live["metadata"]["managedFields"] if m["manager"] == manager]
        assert PAYLOAD not in json.dumps(owned["fieldsV1"]) and RECORD not in json.dumps(owned)

        predicted = _apply(admin, path, manifest, manager, dry_run=True)
        assert templates_text(predicted) == templates_text(live), manager
        assert (
            predicted["metadata"]["annotations"][RECORD]
            == (live["metadata"]["annotations"][RECORD])
        )

        changed = copy.deepcopy(manifest)
        worker = changed["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        worker["env"].append({"name": "FROM_GIT", "value": "1"})
        predicted = _apply(admin, path, changed, manager, dry_run=True)
        expected = copy.deepcopy(live)
        expected_worker = expected["spec"]["workerGroupSpecs"][0]["template"]["spec"]
        expected_worker["containers"][0]["env"].append({"name": "FROM_GIT", "value": "1"})
        # env is a list keyed by name (a map to server-side apply): compare it as one.
        assert _keyed_env(predicted) == _keyed_env(expected), manager


def _keyed_env(body: dict[str, Any]) -> str:
    body = copy.deepcopy(body)
    for template in [body["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in body["spec"]["workerGroupSpecs"]
    ]:
        for container in template["spec"]["containers"]:
            container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    return templates_text(body)


# --- the webhook drains when it stops ----------------------------------------------------


def test_a_stopping_webhook_answers_until_its_drain_ends(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """The webhook Deployment scaled to 0: the kubelet sends its Pod SIGTERM, and the Pod,
    terminating and dropped from the Service's ready endpoints, keeps answering admission
    requests for drainSeconds (kube-proxy routes to a serving, terminating endpoint while no
    ready one is left); then it exits cleanly, well before the grace period ends."""
    ns, admin = node_namespace, kube_node.rest()
    release = make_release({"webhook": {"drainSeconds": 4}})
    assert release.webhook.env()["RAY_PIXI_WEBHOOK_DRAIN_SECONDS"] == "4"
    (pod,) = release.webhook.pods()
    name = pod["metadata"]["name"]
    pod_path = f"/api/v1/namespaces/{ns}/pods/{name}"
    probe = raycluster("probe", labels=LABELS, workers=0)
    path = clusters_path(kube_node, ns)
    release.webhook.terminate()
    poll(lambda: admin.get(pod_path)["metadata"].get("deletionTimestamp"), timeout=30,
         what=f"Pod {name} to be terminating")  # fmt: skip
    signalled = time.monotonic()
    answered = 0
    while time.monotonic() - signalled < 3:  # well inside the drain
        created = admin.request("POST", path, probe, params={"dryRun": "All"})
        assert PAYLOAD in templates_text(created)
        answered += 1
    # Still the only webhook Pod, terminating; its endpoint no longer ready, still serving.
    assert [p["metadata"]["name"] for p in release.webhook.pods()] == [name]
    assert admin.get(pod_path)["metadata"]["deletionTimestamp"]
    conditions = [e["conditions"] for e in release.endpoints()]
    assert conditions and all(
        c.get("terminating") and not c.get("ready") and c.get("serving") for c in conditions
    ), conditions
    assert "answering admission requests for 4 s more (drain" in release.webhook.pod_log(name)
    states: list[dict[str, Any]] = []

    def gone() -> bool:
        try:
            current = admin.get(pod_path)
        except ApiError as error:
            return error.status == 404
        states.extend(s["state"] for s in current["status"].get("containerStatuses") or [])
        return False

    poll(gone, timeout=60, what=f"Pod {name} to exit after its drain", interval=0.1)
    drained = time.monotonic() - signalled
    exits = [state["terminated"] for state in states if "terminated" in state]
    assert all(e["exitCode"] == 0 for e in exits), exits
    grace = release.deployment("webhook")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]  # fmt: skip
    codes = [e["exitCode"] for e in exits]
    print(f"\n{answered} admissions answered after SIGTERM; Pod gone {drained:.1f} s after "
          f"(grace period {grace} s); exit codes seen: {codes}")  # fmt: skip


# --- certificate rotation, end to end --------------------------------------------------------


def test_rotating_the_certificate_refuses_no_admission(
    make_release: Callable[..., Release], kube_node: KubeCluster, node_namespace: str
) -> None:
    """The generated certificate rotated (Secret deleted, helm upgrade) while CREATEs keep
    coming through the API server: the new caBundle trusts the certificate still served, the
    kubelet updates the Pod's mounted Secret, the webhook Pod loads the new pair in place (no
    restart, no rollout), and nothing is refused."""
    import base64
    import ssl
    import threading

    ns, admin = node_namespace, kube_node.rest()
    values = {"webhook": {"tls": {"reloadSeconds": 1}}}
    release = make_release(values)
    (pod,) = release.webhook.pods()
    service = release.service["spec"]
    secret_path = f"/api/v1/namespaces/{ns}/secrets/rp-ray-pixi-webhook-tls"
    old_cert = base64.b64decode(admin.get(secret_path)["data"]["tls.crt"])
    probe = raycluster("probe", labels=LABELS, workers=0)
    path = clusters_path(kube_node, ns)
    results: list[bool | str] = []
    running = threading.Event()
    running.set()

    def admit() -> None:
        rest = kube_node.rest()
        while running.is_set():
            try:
                created = rest.request("POST", path, probe, params={"dryRun": "All"})
                results.append(PAYLOAD in templates_text(created))
            except ApiError as error:
                results.append(str(error))

    def served() -> bytes:
        pem = ssl.get_server_certificate((service["clusterIP"], service["ports"][0]["port"]))
        return pem.encode()

    worker = threading.Thread(target=admit)
    worker.start()
    try:
        admin.delete(secret_path)
        release.upgrade(chart_values(ns, values), restart=False)
        new_cert = base64.b64decode(admin.get(secret_path)["data"]["tls.crt"])
        assert new_cert != old_cert
        before = len(results)
        poll(lambda: len(results) > before + 5, timeout=SETTLE, what="admissions on the old pair")
        rotated = time.monotonic()
        # The kubelet updates the mounted Secret on its own sync, a little later.
        poll(
            lambda: (
                ssl.PEM_cert_to_DER_cert(served().decode())
                == ssl.PEM_cert_to_DER_cert(new_cert.decode())
            ),
            timeout=KUBELET_SYNC,
            what="the webhook Pod to serve the new certificate",
            interval=1,
        )
        print(f"\nthe Pod served the new certificate {time.monotonic() - rotated:.0f} s "
              "after the Secret changed")  # fmt: skip
        after = len(results)
        poll(lambda: len(results) > after + 5, timeout=SETTLE, what="admissions on the new pair")
    finally:
        running.clear()
        worker.join(30)
    failures = [r for r in results if r is not True]
    assert failures == [], failures[:3]
    assert "Serving the renewed webhook certificate" in release.webhook.log()
    # Loaded in place: the same Pod, its container never restarted.
    (now,) = release.webhook.pods()
    assert now["metadata"]["uid"] == pod["metadata"]["uid"]
    assert [c["restartCount"] for c in now["status"]["containerStatuses"]] == [0]
    print(f"\n{len(results)} admissions through the API server during the rotation, none refused")
