"""The Pods KubeRay builds for a labelled RayCluster, run for real with Docker.

The chart is installed on the cluster-in-a-box (real kube-apiserver, the add-on's webhook,
KubeRay), a labelled RayCluster is created, and the head and worker Pods KubeRay built from
the prepared templates are replayed as a kubelet would run them (tests/replay/pod.py): the
add-on's `ray-pixi-payload` init container from images/Dockerfile (real pixi inside), then
the Ray containers with the env, command and args KubeRay wrote. The Ray image holds
nothing of ray-pixi: the plugin can only come from the payload on the volume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ray_pixi
from kube.cluster import KubeCluster
from kube.manifests import raycluster, wait_for_pods
from kube.release import Release, install_release, operator_executable
from kube.rest import poll
from replay.images import PYTHON_PREFIX_IN_IMAGE, real_pixi
from replay.runner import Replay, RunningPod

pytestmark = [pytest.mark.docker, pytest.mark.apiserver]

LABELS = {"ray-pixi.io/enabled": "true"}
PAYLOAD = "ray-pixi-payload"
PAYLOAD_UID = 65532  # images/Dockerfile's USER
RAY_UID = 1000  # the Ray image's user, as in Ray's own images
DASHBOARD_PORT = 8265
RAY_UP_TIMEOUT = 180
JOB_TIMEOUT = 240


@pytest.fixture(scope="module")
def release(
    kube_cluster: KubeCluster, operator_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart, installed with the add-on's image built from this checkout."""
    executable = operator_executable()
    assert executable is not None, "no ray-pixi-operator executable (pip install -e operator)"
    repository, tag = operator_image.rsplit(":", 1)
    installed = install_release(
        kube_cluster,
        tmp_path_factory.mktemp("replay-release"),
        executable=executable,
        name="ray-pixi-replay",  # its own release, next to any other test's
        namespace="ray-pixi-replay",
        values={"image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}},
    )
    try:
        yield installed
    finally:
        installed.uninstall()


def _ray_cluster(name: str, ray_image: str) -> dict[str, Any]:
    """The harness's realistic RayCluster with the local Ray image, labelled for ray-pixi."""
    manifest = raycluster(name, labels=LABELS, workers=1)
    spec = manifest["spec"]
    for template in (spec["headGroupSpec"]["template"], spec["workerGroupSpecs"][0]["template"]):
        ray = template["spec"]["containers"][0]
        ray["image"] = ray_image
        ray["imagePullPolicy"] = "IfNotPresent"
        # Ray's usage stats would try to reach the internet; a user's own setting.
        ray["env"].append({"name": "RAY_USAGE_STATS_ENABLED", "value": "0"})
    return manifest


def _kube_root_ca(cluster: KubeCluster, namespace: str) -> dict[str, Any]:
    """The namespace's kube-root-ca.crt ConfigMap, which the projected token volume reads.

    kube-controller-manager's root-ca-cert-publisher creates it in a real cluster; the
    harness runs no controller-manager, so the test creates it, with the cluster's CA.
    """
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt"},
        "data": {"ca.crt": Path(cluster.ca_file).read_text()},
    }
    cluster.apply(body, namespace)
    return dict(cluster.rest().get(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"))


@pytest.fixture
def ray_pods(
    release: Release, kube_namespace: str, ray_image: str, replay: Replay
) -> tuple[RunningPod, RunningPod]:
    """The head and worker Pods KubeRay built for a labelled RayCluster, started with Docker."""
    cluster, admin = release.cluster, release.admin
    config_map = _kube_root_ca(cluster, kube_namespace)
    cluster.apply(_ray_cluster("replayed", ray_image), kube_namespace)
    head, worker = wait_for_pods(admin, kube_namespace, "replayed", 2)
    services = admin.get(f"/api/v1/namespaces/{kube_namespace}/services")["items"]
    token = cluster.service_account_token(kube_namespace, "default")
    started = time.monotonic()
    running_head, running_worker = replay.start(
        [head, worker], services=services, config_maps=[config_map], tokens={"default": token}
    )
    replay.log(f"replay: Pods' containers started in {time.monotonic() - started:.1f} s")
    return running_head, running_worker


def _alive_nodes(head: RunningPod) -> list[dict[str, Any]]:
    """The Ray nodes the head's state API reports alive (none while the dashboard starts)."""
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=f"http://{head.ip}:{DASHBOARD_PORT}", timeout=10)
    except Exception:  # noqa: BLE001 - not up yet (connection refused, 503): keep polling
        return []
    return [dataclasses.asdict(n) for n in nodes if n.state == "ALIVE"]


def test_kuberay_pods_run_with_the_payload_and_a_plain_job_succeeds(
    ray_pods: tuple[RunningPod, RunningPod],
) -> None:
    head, worker = ray_pods
    pixi, pixi_sha = real_pixi()

    # The init container: non-root, read-only root, no capabilities, as the webhook wrote it.
    for pod in (head, worker):
        config = pod.inspect(PAYLOAD)
        assert config["State"]["ExitCode"] == 0
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert config["HostConfig"]["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in config["HostConfig"]["SecurityOpt"]
        (payload_dir,) = [c for c in pod.pod["spec"]["initContainers"]
                          if c["name"] == PAYLOAD][0]["command"][2:]  # fmt: skip
        assert f"{payload_dir} for x86_64: added python, lib, bin, x86_64" in pod.logs(PAYLOAD)
        volume = pod.host_path("ray-pixi")
        payload = volume / payload_dir.removeprefix("/ray-pixi/")
        assert (payload / "x86_64" / "pixi").stat().st_uid == PAYLOAD_UID
        digest = hashlib.sha256((payload / "x86_64" / "pixi").read_bytes()).hexdigest()
        assert digest == pixi_sha, f"the payload's pixi is not {pixi}"
        assert (payload / "python" / "ray_pixi" / "__init__.py").is_file()

    # Head and worker: one Ray cluster of two alive nodes, at the Pods' own IPs.
    nodes = poll(
        lambda: (n := _alive_nodes(head)) and len(n) == 2 and n,
        timeout=RAY_UP_TIMEOUT,
        what="two alive Ray nodes (head and worker)",
        describe=lambda: (
            f"nodes {_alive_nodes(head)}; head log:\n{head.logs('ray-head')[-2000:]}\n"
            f"worker log:\n{worker.logs('ray-worker')[-2000:]}"
        ),
    )
    assert sorted(n["node_ip"] for n in nodes) == sorted([head.ip, worker.ip])
    # `ray status` in the head container names each node by its group: RAY_NODE_TYPE_NAME, a
    # fieldRef to the Pod's ray.io/group label that the replay resolved.
    status = head.exec("ray-head", "ray", "status")
    assert status.returncode == 0, status.stderr
    assert " 1 headgroup\n" in status.stdout and " 1 cpu\n" in status.stdout, status.stdout
    assert "/2.0 CPU" in status.stdout, status.stdout

    # Each node's Ray user imports the plugin from the payload on the volume, and only there
    # (through the user site: PYTHONUSERBASE names the payload's directory).
    for pod, container in ((head, "ray-head"), (worker, "ray-worker")):
        env = {e["name"]: e.get("value") for e in pod.pod["spec"]["containers"][0]["env"]}
        payload_python = f"{env['PYTHONUSERBASE']}/python"
        where = pod.exec(
            container, "python", "-c", "import os, ray_pixi; print(os.getuid(), ray_pixi.__file__)"
        )
        assert where.returncode == 0, where.stderr
        assert where.stdout.split() == [str(RAY_UID), f"{payload_python}/ray_pixi/__init__.py"]
        bare = pod.exec(container, "env", "-u", "PYTHONUSERBASE", "python", "-c",
                        "import ray_pixi")  # fmt: skip
        assert bare.returncode != 0 and "No module named 'ray_pixi'" in bare.stderr
        # `ray-pixi doctor` reads the running runtime_env agent's own environment (/proc) and
        # imports the plugin with it, as the agent did.
        doctor = pod.exec(container, "python", "-m", "ray_pixi.cli", "doctor")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "Checking the runtime_env agent of the running Ray node" in doctor.stdout
        imported = f"imports ray_pixi {ray_pixi.__version__} from {payload_python}/ray_pixi/"
        assert imported in doctor.stdout, doctor.stdout

    # A plain job through the head's Jobs API, with a task on each node.
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(f"http://{head.ip}:{DASHBOARD_PORT}")
    script = (
        "import json, ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "ray.init()\n"
        "@ray.remote(num_cpus=1)\n"
        "def where():\n"
        "    import sys\n"
        "    return ray.util.get_node_ip_address(), sys.executable\n"
        "nodes = [n['NodeID'] for n in ray.nodes() if n['Alive']]\n"
        "print('RESULT', json.dumps(ray.get([\n"
        "    where.options(scheduling_strategy=On(n, soft=False)).remote() for n in nodes])))\n"
    )
    job = client.submit_job(entrypoint=f"python -c {shlex.quote(script)}")
    final = poll(
        lambda: (s := client.get_job_status(job)).is_terminal() and s,
        timeout=JOB_TIMEOUT,
        what=f"job {job} to finish",
        describe=lambda: client.get_job_logs(job)[-2000:],
    )
    logs = client.get_job_logs(job)
    assert final == JobStatus.SUCCEEDED, logs[-3000:]
    (line,) = [line for line in logs.splitlines() if line.startswith("RESULT ")]
    seen = json.loads(line.removeprefix("RESULT "))
    assert sorted(ip for ip, _ in seen) == sorted([head.ip, worker.ip])
    # The image's own Python ran both tasks (a plain job has no environment of its own).
    assert {str(Path(exe).parent) for _, exe in seen} == {f"{PYTHON_PREFIX_IN_IMAGE}/bin"}
