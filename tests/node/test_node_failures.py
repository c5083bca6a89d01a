"""What a cluster user meets when ray-pixi cannot work on a Ray Pod: the Ray node stays up,
jobs without `runtime_env["pixi"]` run, and pixi jobs fail with the reason.

Each test creates a labelled, head-only RayCluster of e2e/ (the kind flow applies the same
manifests) on the node, waits for its Pod to be Ready by KubeRay's probes, and submits one job
through the head's Jobs API: a plain task, and a task and an actor with an inline pixi
environment, each reporting what happened.
"""

from __future__ import annotations

import json
import secrets

import pytest
from ray_pixi_operator import names

from kube.cluster import KubeCluster
from kube.release import Release
from node.images import PYTHON_PREFIX_IN_IMAGE, UNSUPPORTED_RAY
from node.raycluster import (
    JOBS_DIR,
    NodePod,
    alive_nodes,
    container_env,
    dashboard_address,
    e2e_cluster,
    ray_container,
    start_cluster,
    submit_job,
    wait_for_nodes,
)

pytestmark = [pytest.mark.node]

INLINE = {"pypi_dependencies": {"pyjokes": "==0.8.3"}}
PROBE = ["python", "probe_job.py", json.dumps({"module": None, "runtime_env": {"pixi": INLINE}})]


def _head_only(cluster: KubeCluster, namespace: str, manifest: dict) -> tuple[NodePod, str]:
    """The head Pod, Ready, and its dashboard's address (behind the head's Service)."""
    (head,) = start_cluster(cluster, namespace, manifest)
    address = dashboard_address(cluster, namespace, manifest["metadata"]["name"])
    wait_for_nodes(address, [head])
    return head, address


def _run_probe(address: str) -> dict:
    """The probe job; it succeeds (it catches the setup errors) and returns what it saw."""
    job = submit_job(address, PROBE, submission_id=f"probe-{secrets.token_hex(3)}",
                     working_dir=JOBS_DIR)  # fmt: skip
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    return dict(job.result["nodes"]["head"])


def _prepared(pod: NodePod) -> None:
    """The webhook prepared the Pod and the payload init container ran."""
    status = pod.container_status(names.INIT_CONTAINER_NAME, init=True)
    assert status["state"]["terminated"]["exitCode"] == 0, status
    assert "RAY_PIXI_STORE_DIR" in container_env(pod)


def _ready_by_wget_probes(pod: NodePod) -> None:
    """Without rayVersion (or below 2.53) KubeRay probes with `wget` in the Ray container, as
    Ray's own images allow: the Pod is Ready only because the image has it."""
    (ray_spec,) = [c for c in pod.pod["spec"]["containers"] if c["name"] == ray_container(pod)]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "wget " in " ".join(ray_spec[probe]["exec"]["command"]), ray_spec[probe]
    assert pod.ready()


def _never_restarted(pod: NodePod) -> None:
    """The Ray container runs, Ready, and the kubelet never had to restart it."""
    status = pod.refresh().container_status(ray_container(pod))
    assert "running" in status["state"] and status["ready"], status
    assert status["restartCount"] == 0, status


def test_a_ray_the_plugin_cannot_run_on_keeps_its_node_up_and_fails_pixi_jobs_with_the_reason(
    kube_node: KubeCluster, release: Release, node_namespace: str, e2e_images: dict[str, str]
) -> None:
    """Ray 2.9.3 (the plugin supports >= 2.10) with `rayVersion` absent, so admission cannot
    know: the node starts with the plugin registered, and only pixi requests fail."""
    manifest = e2e_cluster("raycluster-unsupported-ray.yaml", e2e_images)
    assert "rayVersion" not in manifest["spec"]
    head, address = _head_only(kube_node, node_namespace, manifest)
    _prepared(head)
    _ready_by_wget_probes(head)
    (node_before,) = alive_nodes(address)

    seen = _run_probe(address)
    assert seen["plain"]["prefix"] == PYTHON_PREFIX_IN_IMAGE  # the plain task ran
    for kind in ("task", "actor"):
        error = seen[kind].get("error", "")
        assert "ray-pixi cannot run on this Ray node" in error, seen[kind]
        assert f"Ray {UNSUPPORTED_RAY} (needs >= 2.10.0)" in error
        assert "Jobs without runtime_env['pixi'] are not affected" in error

    # The same Ray node is still alive, its container running: nothing crashed.
    assert [n["node_id"] for n in alive_nodes(address)] == [node_before["node_id"]]
    _never_restarted(head)


def test_a_read_only_store_fails_pixi_jobs_naming_the_path_and_plain_jobs_run(
    kube_node: KubeCluster, release: Release, node_namespace: str, e2e_images: dict[str, str]
) -> None:
    """The Ray container mounts the add-on's volume read-only (a user's mount, which the
    add-on keeps): the payload imports, the store cannot be written."""
    manifest = e2e_cluster("raycluster-read-only-store.yaml", e2e_images)
    ray = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH,
            "readOnly": True} in ray["volumeMounts"]  # fmt: skip
    head, address = _head_only(kube_node, node_namespace, manifest)
    _prepared(head)
    # The kubelet mounted it read-only: the Ray user cannot write there.
    touched = head.exec(ray_container(head), "touch", f"{names.MOUNT_PATH}/probe")
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched
    store = container_env(head)["RAY_PIXI_STORE_DIR"]

    seen = _run_probe(address)
    assert seen["plain"]["prefix"] == PYTHON_PREFIX_IN_IMAGE  # the plain task ran
    for kind in ("task", "actor"):
        error = seen[kind].get("error", "")
        assert f"ray-pixi's environment store {store} cannot be used" in error, seen[kind]
        assert "it is on a read-only filesystem" in error
        assert "jobs without runtime_env['pixi'] are not affected" in error
    _never_restarted(head)
