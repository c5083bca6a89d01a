"""The labelled clusters' life on the real node: Pods deleted and recreated, and KubeRay's
autoscaler adding a worker (issue 18). The labelled RayJob is a step of the end-to-end
scenario (e2e/scenario.py, test_e2e_scenario.py).

What a user observes, each scenario on its own cluster in its own namespace (at most three
Ray Pods at a time on the 2-core node):

- Restarts: a RayCluster whose store is on a hostPath (annotations) keeps its environments
  when KubeRay recreates a deleted head Pod: the new head installs nothing, and runs the job
  in the same prefix; a deleted worker's replacement (a new Pod) gets the payload from its
  init container and runs the job, reusing the environment on the node's directory.
- Autoscaling: a head with no CPU and a worker group at 0 replicas; a pixi job whose task
  needs a CPU makes KubeRay's autoscaler (its sidecar in the head Pod, as the ServiceAccount
  KubeRay made) patch the RayCluster, which the API server's audit log shows; the new worker
  installs the environment and runs the task.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from ray_pixi_operator import names

from kube.cluster import KubeCluster
from kube.manifests import cluster_pods
from kube.release import Release
from node.raycluster import (
    INSTALLED_LINE,
    JOBS_DIR,
    Job,
    NodePod,
    Obj,
    Timings,
    container_env,
    dashboard_address,
    e2e_cluster,
    install_logs,
    ray_container,
    start_cluster,
    submit_job,
    wait_for_nodes,
    wait_for_ready_pods,
)
from node.site import Site

pytestmark = [pytest.mark.node]

INLINE = {"pypi_dependencies": {"pyjokes": "==0.8.3"}}
REQUEST = json.dumps({"module": "pyjokes", "runtime_env": {"pixi": INLINE}})
PROBE = ["python", "probe_job.py", REQUEST]  # a task and an actor on each alive node
CPU_TASK = ["python", "cpu_task_job.py", REQUEST]  # one task that needs a CPU


def _submit(address: str, name: str, entrypoint: Sequence[str]) -> Job:
    job = submit_job(address, entrypoint, submission_id=f"{name}-{secrets.token_hex(3)}",
                     working_dir=JOBS_DIR)  # fmt: skip
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    return job


def _ray_cluster(cluster: KubeCluster, namespace: str, name: str) -> Obj:
    return dict(cluster.rest().get(cluster.path_for("ray.io/v1", "RayCluster", namespace, name)))


def _payload_ran(pod: NodePod) -> None:
    """The add-on's payload init container ran to completion in this Pod."""
    status = pod.container_status(names.INIT_CONTAINER_NAME, init=True)
    assert status["state"]["terminated"]["exitCode"] == 0, status


# --- Restarts: the store on a hostPath --------------------------------------------------------


@pytest.fixture
def host_store(kube_node: KubeCluster, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A namespace and a per-test node directory for the store (mode 1777, as the chart's
    README asks of a hostPath directory created ahead). The namespace goes first (its Pods
    with it), then the directory, whose files the containers' uids own (this process is root)."""
    directory = tmp_path / "ray-pixi-store"
    directory.mkdir()
    os.chmod(directory, 0o1777)
    namespace = kube_node.create_namespace(f"node-restarts-{secrets.token_hex(3)}")
    try:
        yield namespace, directory
    finally:
        kube_node.delete_namespace(namespace, timeout=180)
        shutil.rmtree(directory, ignore_errors=True)


def _on_host(directory: Path, path: str) -> Path:
    """Where a path under the add-on's mount (the hostPath volume) is on this machine."""
    return directory / PurePosixPath(path).relative_to(names.MOUNT_PATH)


def _store_logs(directory: Path, pod: NodePod) -> list[Path]:
    store = _on_host(directory, container_env(pod)["RAY_PIXI_STORE_DIR"])
    return sorted((store / "logs").glob("install-*.log"))


def _completed(logs: Sequence[Path]) -> list[Path]:
    done = []
    for log in logs:
        lines = log.read_text(errors="replace").splitlines()
        if lines and lines[-1].startswith(INSTALLED_LINE):
            done.append(log)
    return done


def _seen_in_store(directory: Path, pod: NodePod, seen: Mapping[str, Any]) -> str:
    """The task ran on `pod`, in an environment of the store on the node's directory, with
    pyjokes from it; returns its prefix."""
    assert "error" not in seen, seen.get("error")
    assert seen["ip"] == pod.ip, (seen["ip"], pod.ip)
    prefix = PurePosixPath(seen["prefix"])
    assert prefix.is_relative_to(container_env(pod)["RAY_PIXI_STORE_DIR"]), prefix
    assert PurePosixPath(seen["module"]).is_relative_to(prefix), seen["module"]
    assert (_on_host(directory, str(prefix)) / "conda-meta").is_dir()
    return str(prefix)


def test_deleted_pods_come_back_with_the_environments_on_a_host_path(
    kube_node: KubeCluster, release: Release, e2e_images: dict[str, str], site: Site,
    host_store: tuple[str, Path],
) -> None:  # fmt: skip
    """Deleting the head Pod keeps its environments, with the store on a hostPath: the
    recreated head installs nothing. A deleted worker's replacement gets the payload and runs
    jobs, in the environment already on the node's directory."""
    namespace, directory = host_store
    took = Timings()
    manifest = site.apply_to(e2e_cluster("raycluster.yaml", e2e_images))
    manifest["metadata"]["annotations"] = {
        names.CACHE_VOLUME_ANNOTATION: "hostPath",
        names.CACHE_HOST_PATH_ANNOTATION: str(directory),
    }
    name = manifest["metadata"]["name"]
    head, worker = start_cluster(kube_node, namespace, manifest,
                                 config_maps=site.config_maps(namespace))  # fmt: skip
    for pod in (head, worker):
        (volume,) = [v for v in pod.pod["spec"]["volumes"] if v["name"] == names.VOLUME_NAME]
        assert volume["hostPath"]["path"] == str(directory), volume
        _payload_ran(pod)
    address = dashboard_address(kube_node, namespace, name)
    first_nodes = wait_for_nodes(address, [head, worker])
    took.mark("RayCluster on a hostPath store: Pods Ready, both Ray nodes alive")

    first = _submit(address, "first", PROBE)
    prefix = _seen_in_store(directory, head, first.result["nodes"]["head"]["task"])
    assert _seen_in_store(directory, worker, first.result["nodes"]["worker"]["task"]) == prefix
    logs = _store_logs(directory, head)
    assert logs and set(logs) == set(_completed(logs)), [p.name for p in logs]
    took.mark(f"first pixi job: {len(logs)} install(s) into the node's store "
              f"({first.seconds:.0f} s from submission)")  # fmt: skip

    # The head Pod deleted: KubeRay recreates it (a new Pod), on the same node directory.
    old_head_uid = head.pod["metadata"]["uid"]
    kube_node.rest().delete(f"/api/v1/namespaces/{namespace}/pods/{head.name}")
    head, worker = wait_for_ready_pods(kube_node, namespace, name, 2, not_uids=[old_head_uid])
    assert head.pod["metadata"]["labels"]["ray.io/node-type"] == "head"
    assert head.pod["metadata"]["uid"] != old_head_uid
    _payload_ran(head)
    address = dashboard_address(kube_node, namespace, name)
    # A new head is a new Ray cluster (no GCS fault tolerance here): both nodes are new ones.
    old_ids = [n["node_id"] for n in first_nodes]
    wait_for_nodes(address, [head, worker], not_ids=old_ids)
    worker_restarts = worker.refresh().container_status(ray_container(worker))["restartCount"]
    took.mark(f"head Pod deleted, recreated by KubeRay, Ready; a new Ray cluster formed "
              f"(the worker's Ray container restarted {worker_restarts} time(s))")  # fmt: skip

    after_head = _submit(address, "after-head", PROBE)
    assert _seen_in_store(directory, head, after_head.result["nodes"]["head"]["task"]) == prefix
    assert _seen_in_store(directory, worker,
                          after_head.result["nodes"]["worker"]["task"]) == prefix  # fmt: skip
    assert _store_logs(directory, head) == logs  # the recreated head installed nothing
    took.mark(f"the job on the recreated head: no install ({after_head.seconds:.0f} s)")

    # The worker Pod deleted: KubeRay replaces it with a new Pod.
    old_worker_uid = worker.pod["metadata"]["uid"]
    old_worker_ids = [n["node_id"] for n in wait_for_nodes(address, [head, worker])
                      if n["node_ip"] == worker.ip]  # fmt: skip
    kube_node.rest().delete(f"/api/v1/namespaces/{namespace}/pods/{worker.name}")
    head, worker = wait_for_ready_pods(kube_node, namespace, name, 2, not_uids=[old_worker_uid])
    assert worker.pod["metadata"]["uid"] != old_worker_uid
    assert worker.pod["metadata"]["labels"]["ray.io/node-type"] == "worker"
    _payload_ran(worker)  # the replacement got the payload from its own init container
    wait_for_nodes(address, [head, worker], not_ids=old_worker_ids)
    took.mark("worker Pod deleted, replaced by KubeRay, its Ray node joined")

    after_worker = _submit(address, "after-worker", PROBE)
    seen = after_worker.result["nodes"]["worker"]
    assert seen["node_id"] not in old_worker_ids
    assert _seen_in_store(directory, worker, seen["task"]) == prefix
    assert _seen_in_store(directory, worker, seen["actor"]) == prefix
    assert _store_logs(directory, worker) == logs  # reused on the node's directory
    took.mark(f"the job on the replacement worker ({after_worker.seconds:.0f} s)")
    took.total("restarts")


# --- Autoscaling -------------------------------------------------------------------------------


def _autoscaling_cluster(images: Mapping[str, str], site: Site) -> Obj:
    """e2e/raycluster.yaml with KubeRay's in-tree autoscaler: a head with no CPU (a task that
    needs one must go to a worker) and its worker group at 0 replicas (up to 1)."""
    manifest = e2e_cluster("raycluster.yaml", images)
    manifest["metadata"]["name"] = "pixi-autoscale"
    spec = manifest["spec"]
    spec["enableInTreeAutoscaling"] = True
    spec["autoscalerOptions"] = {
        # The node has 2 cores: the sidecar asks for little (KubeRay's default is 500m).
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "500m", "memory": "1Gi"}},
        # Keep the worker while the test reads its volume (the default scales down in 60 s).
        "idleTimeoutSeconds": 600,
    }  # fmt: skip
    spec["headGroupSpec"]["rayStartParams"] = {"num-cpus": "0"}
    (group,) = spec["workerGroupSpecs"]
    group.update(replicas=0, minReplicas=0, maxReplicas=1)
    return site.apply_to(manifest)


def test_the_autoscaler_adds_a_worker_that_installs_and_runs_a_pixi_task(
    kube_node: KubeCluster, release: Release, e2e_images: dict[str, str], site: Site,
    node_namespace: str,
) -> None:  # fmt: skip
    took = Timings()
    namespace = node_namespace
    manifest = _autoscaling_cluster(e2e_images, site)
    name = manifest["metadata"]["name"]
    (head,) = start_cluster(kube_node, namespace, manifest,
                            config_maps=site.config_maps(namespace))  # fmt: skip
    before = _ray_cluster(kube_node, namespace, name)
    assert [g["replicas"] for g in before["spec"]["workerGroupSpecs"]] == [0]
    assert [p["metadata"]["labels"]["ray.io/node-type"]
            for p in cluster_pods(kube_node.rest(), namespace, name)] == ["head"]  # fmt: skip
    containers = [c["name"] for c in head.pod["spec"]["containers"]]
    assert "autoscaler" in containers, containers  # KubeRay's sidecar
    account = head.pod["spec"]["serviceAccountName"]
    username = f"system:serviceaccount:{namespace}:{account}"
    address = dashboard_address(kube_node, namespace, name)
    wait_for_nodes(address, [head])
    took.mark("head-only RayCluster with the autoscaler: Ready, its Ray node alive")

    offset = kube_node.audit_offset()
    job = _submit(address, "needs-a-worker", CPU_TASK)
    took.mark(f"the pixi job that needs a worker finished ({job.seconds:.0f} s from submission)")

    after = _ray_cluster(kube_node, namespace, name)
    assert [g["replicas"] for g in after["spec"]["workerGroupSpecs"]] == [1]
    events, _ = kube_node.audit_events(username, since=offset)
    changes = [e for e in events
               if e["verb"] in ("patch", "update")
               and e["objectRef"].get("resource") == names.RAYCLUSTER_PLURAL
               and e["objectRef"].get("name") == name
               and 200 <= e.get("responseStatus", {}).get("code", 0) < 300]  # fmt: skip
    assert changes, (f"no patch/update of rayclusters/{name} by {username}: "
                     f"{[(e['verb'], e.get('objectRef')) for e in events]}")  # fmt: skip
    print(f"node: {username}: {[(e['verb'], e['objectRef'].get('subresource')) for e in changes]}",
          flush=True)  # fmt: skip

    pods = [NodePod(kube_node, p) for p in cluster_pods(kube_node.rest(), namespace, name)]
    (worker,) = [p for p in pods if p.pod["metadata"]["labels"]["ray.io/node-type"] == "worker"]
    _payload_ran(worker)
    seen = job.result
    assert "error" not in seen, seen.get("error")
    assert seen["ip"] == worker.ip  # the task ran on the new worker
    prefix = PurePosixPath(seen["prefix"])
    assert prefix.is_relative_to(container_env(worker)["RAY_PIXI_STORE_DIR"])
    assert PurePosixPath(seen["module"]).is_relative_to(prefix)
    logs = install_logs(worker)  # the worker installed it, on its own emptyDir
    assert len(logs) == 1 and _completed(logs) == logs, [p.name for p in logs]
    took.total("autoscaling")
