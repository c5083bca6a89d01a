"""What a cluster user meets when ray-pixi cannot work on a replayed Ray Pod: the Ray node
stays up, jobs without `runtime_env["pixi"]` run, and pixi jobs fail with the reason.

Each test replays the head Pod KubeRay built for a labelled, head-only RayCluster of e2e/
(after the add-on's webhook; the kind flow applies the same manifests) and submits one job
through the head's Jobs API: a plain task, and a task and an actor with an inline pixi
environment, each reporting what happened.
"""

from __future__ import annotations

import json
import secrets

import pytest
from ray_pixi_operator import names

from kube.release import Release
from replay.images import PYTHON_PREFIX_IN_IMAGE, UNSUPPORTED_RAY
from replay.kuberay import (
    JOBS_DIR,
    alive_nodes,
    container_env,
    e2e_cluster,
    ray_container,
    start_cluster,
    submit_job,
    wait_for_nodes,
)
from replay.runner import Replay, RunningPod

pytestmark = [pytest.mark.docker, pytest.mark.apiserver]

INLINE = {"pypi_dependencies": {"pyjokes": "==0.8.3"}}
PROBE = ["python", "probe_job.py", json.dumps({"module": None, "runtime_env": {"pixi": INLINE}})]


def _head_only(release: Release, namespace: str, manifest: dict, replay: Replay) -> RunningPod:
    (head,) = start_cluster(release, namespace, manifest, replay)
    wait_for_nodes([head])
    return head


def _run_probe(head: RunningPod) -> dict:
    """The probe job; it succeeds (it catches the setup errors) and returns what it saw."""
    job = submit_job(head, PROBE, submission_id=f"probe-{secrets.token_hex(3)}",
                     working_dir=JOBS_DIR)  # fmt: skip
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    return dict(job.result["nodes"]["head"])


def _prepared(pod: RunningPod) -> None:
    """The webhook prepared the Pod and the payload init container ran."""
    init = pod.inspect(names.INIT_CONTAINER_NAME)
    assert init["State"]["ExitCode"] == 0
    assert "RAY_PIXI_STORE_DIR" in container_env(pod)


def test_a_ray_the_plugin_cannot_run_on_keeps_its_node_up_and_fails_pixi_jobs_with_the_reason(
    release: Release, kube_namespace: str, e2e_images: dict[str, str], replay: Replay
) -> None:
    """Ray 2.9.3 (the plugin supports >= 2.10) with `rayVersion` absent, so admission cannot
    know: the node starts with the plugin registered, and only pixi requests fail."""
    manifest = e2e_cluster("raycluster-unsupported-ray.yaml", e2e_images)
    assert "rayVersion" not in manifest["spec"]
    head = _head_only(release, kube_namespace, manifest, replay)
    _prepared(head)
    (node_before,) = alive_nodes(head)

    seen = _run_probe(head)
    assert seen["plain"]["prefix"] == PYTHON_PREFIX_IN_IMAGE  # the plain task ran
    for kind in ("task", "actor"):
        error = seen[kind].get("error", "")
        assert "ray-pixi cannot run on this Ray node" in error, seen[kind]
        assert f"Ray {UNSUPPORTED_RAY} (needs >= 2.10.0)" in error
        assert "Jobs without runtime_env['pixi'] are not affected" in error

    # The same Ray node is still alive, its container running: nothing crashed.
    assert [n["node_id"] for n in alive_nodes(head)] == [node_before["node_id"]]
    assert head.running(ray_container(head))
    assert head.inspect(ray_container(head))["RestartCount"] == 0


def test_a_read_only_store_fails_pixi_jobs_naming_the_path_and_plain_jobs_run(
    release: Release, kube_namespace: str, e2e_images: dict[str, str], replay: Replay
) -> None:
    """The Ray container mounts the add-on's volume read-only (a user's mount, which the
    add-on keeps): the payload imports, the store cannot be written."""
    manifest = e2e_cluster("raycluster-read-only-store.yaml", e2e_images)
    ray = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH,
            "readOnly": True} in ray["volumeMounts"]  # fmt: skip
    head = _head_only(release, kube_namespace, manifest, replay)
    _prepared(head)
    mounts = head.inspect(ray_container(head))["Mounts"]
    assert [m["RW"] for m in mounts if m["Destination"] == names.MOUNT_PATH] == [False]
    store = container_env(head)["RAY_PIXI_STORE_DIR"]

    seen = _run_probe(head)
    assert seen["plain"]["prefix"] == PYTHON_PREFIX_IN_IMAGE  # the plain task ran
    for kind in ("task", "actor"):
        error = seen[kind].get("error", "")
        assert f"ray-pixi's environment store {store} cannot be used" in error, seen[kind]
        assert "it is on a read-only filesystem" in error
        assert "jobs without runtime_env['pixi'] are not affected" in error
    assert head.running(ray_container(head))
    assert head.inspect(ray_container(head))["RestartCount"] == 0
