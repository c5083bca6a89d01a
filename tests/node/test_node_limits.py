"""The limits a real kubelet enforces on the Ray Pods the add-on prepares, and what a user
sees when one is hit: the payload init container's memory limit (OOMKilled), the store's
emptyDir sizeLimit (eviction) and the plugin's disk budget that keeps a store under it, the
QoS class, Pod Security "restricted", and a store on a PersistentVolume.

Each test creates head-only RayClusters (the machine has two cores) in namespaces of its own
and polls on what the API server reports; timings are printed, never asserted.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

import pytest
from ray_pixi_operator import names
from ray_pixi_operator.options import DISK_BUDGET_FRACTION

from kube.cluster import KubeCluster
from kube.manifests import raycluster
from kube.node import NODE_NAME
from kube.release import CHART, Release, install_release
from kube.rest import ApiError, poll
from node.raycluster import (
    JOBS_DIR,
    LABELS,
    NodePod,
    Obj,
    Timings,
    container_env,
    dashboard_address,
    e2e_cluster,
    host_path_of,
    ray_container,
    start_cluster,
    store_dir,
    submit_job,
    wait_for_nodes,
)
from node.site import Site

pytestmark = [pytest.mark.node]

INLINE = {"pypi_dependencies": {"pyjokes": "==0.8.3"}}
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# What a Ray container sets so that Pod Security "restricted" admits it (the Ray image's
# user is 1000:100).
RESTRICTED_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _head_only(e2e_images: Mapping[str, str], name: str, *,
               annotations: Mapping[str, str] | None = None,
               resources: Obj | None = None) -> Obj:  # fmt: skip
    """e2e/raycluster.yaml without its worker group, renamed, with `annotations` and the
    head's Ray container `resources` (default: a smaller CPU request than e2e's)."""
    manifest = e2e_cluster("raycluster.yaml", e2e_images)
    manifest["metadata"]["name"] = name
    manifest["metadata"]["annotations"] = dict(annotations or {})
    manifest["spec"].pop("workerGroupSpecs", None)
    ray = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["resources"] = resources or {"requests": {"cpu": "250m", "memory": "2Gi"},
                                     "limits": {"cpu": "1", "memory": "3Gi"}}  # fmt: skip
    return manifest


def _pods_of(cluster: KubeCluster, namespace: str, name: str) -> list[Obj]:
    return list(cluster.rest().get(f"/api/v1/namespaces/{namespace}/pods",
                                   labelSelector=f"{names.CLUSTER_LABEL}={name}")["items"])


def _events(cluster: KubeCluster, namespace: str, **field: str) -> list[Obj]:
    selector = ",".join(f"involvedObject.{k}={v}" for k, v in field.items())
    return list(cluster.rest().get(f"/api/v1/namespaces/{namespace}/events",
                                   fieldSelector=selector)["items"])


def _head_job(address: str, name: str, runtime_env: Obj) -> Obj:
    """probe_job.py with `runtime_env`; what the head's task saw."""
    request = {"module": "pyjokes", "runtime_env": runtime_env}
    entry = ["python", "probe_job.py", json.dumps(request)]
    job = submit_job(address, entry, submission_id=f"{name}-{secrets.token_hex(3)}",
                     working_dir=JOBS_DIR)  # fmt: skip
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    seen = dict(job.result["nodes"]["head"]["task"])
    assert "error" not in seen, seen["error"]
    return seen


def _du(*paths: Path) -> int:
    """Bytes the trees under `paths` occupy, each inode once (as du counts)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in (w for p in paths for w in os.walk(p)):
        for entry in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, entry))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _volume_used_by_kubelet(cluster: KubeCluster, pod: NodePod, volume: str) -> int | None:
    """The kubelet's own measure of a Pod's volume (its stats summary, as the eviction manager
    reads it); None until it has measured."""
    summary = cluster.rest().get(f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary")
    for entry in summary.get("pods") or []:
        if entry["podRef"]["uid"] == pod.pod["metadata"]["uid"]:
            for stats in entry.get("volume") or []:
                if stats.get("name") == volume and "usedBytes" in stats:
                    return int(stats["usedBytes"])
    return None


# 1 --------------------------------------------------------------------------------------------

def _injected_memory(cluster: KubeCluster, namespace: str) -> str | None:
    """The payload init container's memory limit the webhook gives a labelled RayCluster now
    (a dry-run create)."""
    probe = raycluster("memory-probe", labels=dict(LABELS), workers=0)
    path = cluster.path_for("ray.io/v1", "RayCluster", namespace)
    try:
        answer = cluster.rest().request("POST", path, probe, params={"dryRun": "All"})
    except ApiError:
        return None
    for init in answer["spec"]["headGroupSpec"]["template"]["spec"].get("initContainers", []):
        if init["name"] == names.INIT_CONTAINER_NAME:
            return str(init["resources"]["limits"]["memory"])
    return None


def test_a_payload_init_container_over_its_memory_limit_is_oomkilled_and_the_docs_say_what_to_raise(  # noqa: E501
    kube_node: KubeCluster, release: Release, operator_image: str, node_namespace: str,
    e2e_images: dict[str, str],
) -> None:  # fmt: skip
    """An admin sets the chart's `injection.initContainerMemory` too small (16Mi; the payload
    copy needs some 20Mi): the Ray Pod's init container shows OOMKilled, and the chart's
    values.yaml and README say to raise that value when it does."""
    took = Timings("node-limits: oom")
    repository, tag = operator_image.rsplit(":", 1)
    base = {"image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}}
    small = "16Mi"
    release.upgrade({**base, "injection": {"initContainerMemory": small}})
    try:
        poll(lambda: _injected_memory(kube_node, node_namespace) == small, timeout=120,
             what=f"the webhook to inject {small}")  # fmt: skip
        took.mark(f"helm upgrade to initContainerMemory {small}, the webhook injecting it")
        kube_node.apply(_head_only(e2e_images, "oom"), node_namespace)

        def oom_killed() -> tuple[Obj, Obj] | None:
            for pod in _pods_of(kube_node, node_namespace, "oom"):
                for status in pod["status"].get("initContainerStatuses") or []:
                    if status["name"] != names.INIT_CONTAINER_NAME:
                        continue
                    for state in (status.get("state") or {}, status.get("lastState") or {}):
                        if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                            return pod, status
            return None

        pod, status = poll(oom_killed, timeout=180, interval=1,
                           what="the payload init container to be OOMKilled",
                           describe=lambda: json.dumps([p["status"] for p in _pods_of(
                               kube_node, node_namespace, "oom")])[:3000])  # fmt: skip
        took.mark("the head Pod's payload init container OOMKilled")
        print(f"node-limits: {names.INIT_CONTAINER_NAME} status: {json.dumps(status)}",
              flush=True)  # fmt: skip
        (init,) = [c for c in pod["spec"]["initContainers"]
                   if c["name"] == names.INIT_CONTAINER_NAME]  # fmt: skip
        assert init["resources"]["limits"]["memory"] == small
        assert not any(c.get("ready") for c in pod["status"].get("containerStatuses") or [])
    finally:
        release.upgrade(base)
        poll(lambda: _injected_memory(kube_node, node_namespace) == "256Mi", timeout=120,
             what="the webhook to inject the default memory again")  # fmt: skip
        took.mark("helm upgrade back to the defaults")

    # What the docs tell the admin who sees it.
    values = (CHART / "values.yaml").read_text()
    comment = values[:values.index("  initContainerMemory: ")].rsplit("\n\n", 1)[-1]
    assert "OOMKilled" in comment and "raise" in comment, comment
    readme = (CHART / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if "`injection.initContainerMemory`" in line]
    assert "OOMKilled" in row and "raise" in row, row


# 2 --------------------------------------------------------------------------------------------

def test_the_stores_size_limit_is_enforced_by_eviction_and_the_disk_budget_keeps_installs_under_it(
    kube_node: KubeCluster, release: Release, node_namespace: str, e2e_images: dict[str, str],
    site: Site,
) -> None:  # fmt: skip
    """A cluster with `cache-size-limit: 1Gi`: the add-on derives the plugin's disk budget
    (75 %), a pixi install stays under it and the kubelet, having measured the volume, leaves
    the Pod running; then writing past the limit into the volume gets the Pod evicted with a
    message naming the emptyDir's limit."""
    took = Timings("node-limits: size limit")
    limit = "1Gi"
    manifest = site.apply_to(_head_only(e2e_images, "size-limit", annotations={
        names.CACHE_SIZE_LIMIT_ANNOTATION: limit}))  # fmt: skip
    (head,) = start_cluster(kube_node, node_namespace, manifest,
                            config_maps=site.config_maps(node_namespace))  # fmt: skip
    address = dashboard_address(kube_node, node_namespace, "size-limit")
    wait_for_nodes(address, [head])
    took.mark("head Ready, its Ray node alive")
    (volume,) = [v for v in head.pod["spec"]["volumes"] if v["name"] == names.VOLUME_NAME]
    assert volume["emptyDir"] == {"sizeLimit": limit}
    budget_gib = float(container_env(head)[names.DISK_BUDGET_GB_ENV])
    assert budget_gib == int(DISK_BUDGET_FRACTION * 100) / 100  # 0.75 of 1 GiB
    budget = int(budget_gib * 2**30)

    seen = _head_job(address, "inline", {"pixi": INLINE})
    took.mark("a pixi install on the head")
    prefix = host_path_of(head, seen["prefix"])
    assert (prefix / "conda-meta").is_dir()
    volume_dir = head.host_path(names.VOLUME_NAME)
    store = store_dir(head)
    cache = host_path_of(head, container_env(head)[names.PIXI_CACHE_DIR_ENV])
    store_and_cache = _du(store / "envs", cache)
    on_volume = _du(volume_dir)
    print(f"node-limits: store envs + pixi cache {store_and_cache / 2**20:.0f} MiB "
          f"(budget {budget / 2**20:.0f} MiB); the whole volume {on_volume / 2**20:.0f} MiB "
          f"(limit {limit})", flush=True)  # fmt: skip
    assert store_and_cache <= budget
    assert on_volume < 2**30

    # The kubelet measured the volume with the environment on it, and the Pod kept running.
    used = poll(lambda: (u := _volume_used_by_kubelet(kube_node, head, names.VOLUME_NAME))
                and u >= on_volume * 0.9 and u, timeout=180, interval=2,
                what="the kubelet's measure of the volume with the environment")  # fmt: skip
    took.mark(f"the kubelet measured {used / 2**20:.0f} MiB on the volume")
    head.refresh()
    assert head.pod["status"]["phase"] == "Running" and "reason" not in head.pod["status"]

    # Past the limit: 1 GiB more, written by the Ray user into the volume.
    fill = head.exec(ray_container(head), "dd", "if=/dev/zero", f"of={names.MOUNT_PATH}/fill",
                     "bs=1M", "count=1024", "conv=fsync")  # fmt: skip
    took.mark(f"dd of 1 GiB into the volume (exit {fill.returncode})")

    def evicted() -> Obj | None:
        for event in _events(kube_node, node_namespace, name=head.name, kind="Pod"):
            if event.get("reason") == "Evicted":
                return event
        return None

    # The kubelet refreshes volume usage about once a minute (volumeStatsAggPeriod, 1m).
    event = poll(evicted, timeout=300, interval=1, what="the kubelet to evict the head Pod",
                 describe=lambda: json.dumps(head.refresh().pod["status"])[:2000])  # fmt: skip
    took.mark("the kubelet evicted the head Pod (its Event)")
    print(f"node-limits: {event['message']}", flush=True)
    assert "emptyDir" in event["message"].replace("EmptyDir", "emptyDir"), event["message"]
    assert f'"{names.VOLUME_NAME}"' in event["message"] and limit in event["message"], event

    def failed() -> tuple[str, Obj] | None:
        """The Pod's final status, or that KubeRay deleted the failed Pod already (it then
        creates a new head)."""
        try:
            status = dict(head.refresh().pod["status"])
        except ApiError as error:
            if error.status == 404:
                return "deleted", {}
            raise
        return ("failed", status) if status.get("phase") == "Failed" else None

    how, status = poll(failed, timeout=120, interval=0.5,
                       what="the evicted head Pod to be Failed")  # fmt: skip
    took.mark(f"the evicted head Pod {how}")
    if how == "failed":
        assert status["reason"] == "Evicted" and limit in status["message"], status


# 3 --------------------------------------------------------------------------------------------

def test_requests_equal_to_limits_give_a_guaranteed_pod_with_the_addons_init_container(
    kube_node: KubeCluster, release: Release, node_namespace: str, e2e_images: dict[str, str]
) -> None:
    """The user's Ray container asks for requests == limits; the add-on's init container does
    the same, so the kubelet reports the Pod Guaranteed."""
    took = Timings("node-limits: guaranteed")
    equal = {"cpu": "500m", "memory": "2Gi"}
    manifest = _head_only(e2e_images, "guaranteed",
                          resources={"requests": dict(equal), "limits": dict(equal)})
    (head,) = start_cluster(kube_node, node_namespace, manifest)
    took.mark("head Ready")
    spec = head.pod["spec"]
    containers = [*(spec.get("initContainers") or []), *spec["containers"]]
    assert names.INIT_CONTAINER_NAME in [c["name"] for c in spec["initContainers"]]
    for container in containers:
        resources = container.get("resources") or {}
        assert resources.get("limits") and resources.get("requests") == resources["limits"], (
            container)
        assert {"cpu", "memory"} <= set(resources["limits"]), container
    assert head.pod["status"]["qosClass"] == "Guaranteed", head.pod["status"]


# 4 --------------------------------------------------------------------------------------------

@pytest.fixture
def restricted_namespace(kube_node: KubeCluster) -> Iterator[str]:
    name = f"n-restricted-{secrets.token_hex(3)}"
    kube_node.create_namespace(name, labels=dict(RESTRICTED))
    yield name
    kube_node.delete_namespace(name)


def test_the_addons_own_pods_are_admitted_and_ready_under_pod_security_restricted(
    kube_node: KubeCluster, operator_image: str, restricted_namespace: str
) -> None:
    """The chart installed into a namespace that enforces "restricted": its webhook and
    reconciler Pods are admitted (none refused) and become Ready."""
    took = Timings("node-limits: restricted release")
    repository, tag = operator_image.rsplit(":", 1)
    installed = install_release(
        kube_node, name="ray-pixi-restricted",
        namespace=restricted_namespace, create_namespace=False,
        values={"image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                "namespaces": [restricted_namespace], "webhook": {"replicas": 1}},
    )  # fmt: skip
    try:
        took.mark("helm install, the webhook and the reconciler rolled out and injecting")
        pods = kube_node.rest().get(f"/api/v1/namespaces/{restricted_namespace}/pods")["items"]
        roles = sorted(p["metadata"]["labels"].get("ray-pixi.io/role", "") for p in pods)
        assert roles == ["reconciler", "webhook"], roles
        for pod in pods:
            assert any(c["type"] == "Ready" and c["status"] == "True"
                       for c in pod["status"]["conditions"]), pod["status"]  # fmt: skip
        refused = [e["message"] for e in _events(kube_node, restricted_namespace)
                   if "PodSecurity" in e.get("message", "")]  # fmt: skip
        assert not refused, refused
    finally:
        installed.uninstall()


def test_pod_security_restricted_admits_prepared_ray_pods_the_user_made_compliant_and_names_the_users_container_otherwise(  # noqa: E501
    kube_node: KubeCluster, release: Release, restricted_namespace: str,
    e2e_images: dict[str, str],
) -> None:  # fmt: skip
    """In a namespace enforcing "restricted": a RayCluster whose Ray container is compliant
    gets a Ready head Pod with the add-on's init container; a plain one gets no Pod, and
    KubeRay's event says why, naming the user's container, never the add-on's."""
    took = Timings("node-limits: restricted ray pods")
    compliant = _head_only(e2e_images, "compliant")
    ray = compliant["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["securityContext"] = copy.deepcopy(RESTRICTED_CONTEXT)
    plain = _head_only(e2e_images, "plain")
    kube_node.apply(plain, restricted_namespace)
    (head,) = start_cluster(kube_node, restricted_namespace, compliant)
    took.mark("the compliant cluster's head Ready")
    init = head.container_status(names.INIT_CONTAINER_NAME, init=True)
    assert init["state"]["terminated"]["exitCode"] == 0, init

    def refusal() -> str | None:
        for event in _events(kube_node, restricted_namespace, name="plain"):
            if "violates PodSecurity" in event.get("message", ""):
                return str(event["message"])
        return None

    message = poll(refusal, timeout=120, interval=1, what="KubeRay's event on the plain cluster",
                   describe=lambda: json.dumps(_events(kube_node, restricted_namespace,
                                                       name="plain"))[:3000])  # fmt: skip
    took.mark("KubeRay's event about the plain cluster's refused head Pod")
    print(f"node-limits: {message}", flush=True)
    assert 'restricted:latest' in message
    assert 'container "ray-head"' in message, message
    assert names.INIT_CONTAINER_NAME not in message, message
    assert not _pods_of(kube_node, restricted_namespace, "plain")


# 5 --------------------------------------------------------------------------------------------

def test_a_store_on_a_persistent_volume_claim_holds_the_environments_on_the_volume(
    kube_node: KubeCluster, release: Release, node_namespace: str, e2e_images: dict[str, str],
    site: Site, tmp_path: Path,
) -> None:  # fmt: skip
    """A static hostPath PersistentVolume bound to a claim, named by `cache-volume:
    persistentVolumeClaim` and `cache-pvc-name`: the head mounts it, a pixi job installs into
    it, and the environment is in the PV's directory on this machine."""
    took = Timings("node-limits: pvc")
    directory = tmp_path / "pv"
    directory.mkdir()
    directory.chmod(0o1777)  # as for hostPath stores: writable by the Pods' users
    pv_name = f"ray-pixi-store-{secrets.token_hex(3)}"
    claim = "ray-pixi-store"
    admin = kube_node.rest()
    admin.create("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "hostPath": {"path": str(directory), "type": "Directory"},
            "claimRef": {"namespace": node_namespace, "name": claim},
        },
    })  # fmt: skip
    try:
        admin.create(f"/api/v1/namespaces/{node_namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "volumeName": pv_name, "resources": {"requests": {"storage": "5Gi"}}},
        })  # fmt: skip
        poll(lambda: admin.get(f"/api/v1/namespaces/{node_namespace}/persistentvolumeclaims/"
                               f"{claim}").get("status", {}).get("phase") == "Bound",
             timeout=60, what="the claim to bind")  # fmt: skip
        took.mark("the claim Bound to the static PV")
        manifest = site.apply_to(_head_only(e2e_images, "on-pvc", annotations={
            names.CACHE_VOLUME_ANNOTATION: "persistentVolumeClaim",
            names.CACHE_PVC_NAME_ANNOTATION: claim,
        }))  # fmt: skip
        (head,) = start_cluster(kube_node, node_namespace, manifest,
                                config_maps=site.config_maps(node_namespace))  # fmt: skip
        address = dashboard_address(kube_node, node_namespace, "on-pvc")
        wait_for_nodes(address, [head])
        took.mark("head Ready, its Ray node alive")
        (volume,) = [v for v in head.pod["spec"]["volumes"] if v["name"] == names.VOLUME_NAME]
        assert volume["persistentVolumeClaim"] == {"claimName": claim}
        payload = PurePosixPath(container_env(head)[names.PIXI_EXE_ENV]).relative_to(
            names.MOUNT_PATH)
        assert (directory / payload).is_file(), "the init container's payload is not on the PV"

        seen = _head_job(address, "on-pvc", {"pixi": INLINE})
        took.mark("a pixi install on the head")
        prefix = PurePosixPath(seen["prefix"])
        assert prefix.is_relative_to(names.STORE_DIR), prefix
        on_host = directory / prefix.relative_to(names.MOUNT_PATH)
        assert (on_host / "conda-meta").is_dir(), f"{on_host} is not the environment"
        assert seen["module"].startswith(str(prefix)), seen["module"]
    finally:
        kube_node.delete_namespace(node_namespace)  # the Pod and the claim before the PV
        admin.delete(f"/api/v1/persistentvolumes/{pv_name}", missing_ok=True)
