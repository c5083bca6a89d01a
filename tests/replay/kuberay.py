"""A labelled RayCluster on the harness, its Pods replayed, and jobs through the head's Jobs API.

The shared steps of the KubeRay replay tests: the RayCluster a user writes (the manifests the
kind flow applies, `e2e/raycluster*.yaml`, with local images standing in for Docker Hub's),
the Pods KubeRay builds for it after the add-on's webhook, started with Docker (`Replay`),
the Ray nodes they form, and jobs submitted with `ray job submit` from this process, as a
user submits them to a cluster's dashboard. Where the add-on put things (volume, store,
pixi) is read from the Pods, not assumed.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from ray_pixi_operator import names

from kube.cluster import KubeCluster
from kube.manifests import wait_for_pods
from kube.release import Release
from kube.rest import poll

from .runner import Replay, RunningPod

__all__ = [
    "DASHBOARD_PORT",
    "E2E_RAY_IMAGE",
    "JOBS_DIR",
    "E2E_DIR",
    "LABELS",
    "Job",
    "alive_nodes",
    "completed_installs",
    "container_env",
    "host_path_of",
    "install_logs",
    "kube_root_ca",
    "process_ids",
    "cluster_templates",
    "e2e_cluster",
    "ray_container",
    "start_cluster",
    "store_dir",
    "submit_job",
    "wait_for_nodes",
]

LABELS = {names.ENABLED_LABEL: names.ENABLED_VALUE}
JOBS_DIR = Path(__file__).resolve().parent / "jobs"  # the jobs' scripts: a working_dir
E2E_DIR = Path(__file__).resolve().parents[2] / "e2e"  # the kind flow's manifests
# The Ray images the kind flow pulls, for which the replay uses its own (tests/replay/images.py).
E2E_RAY_IMAGE = "rayproject/ray:{ray}-py{python}"
DASHBOARD_PORT = 8265
RAY_UP_TIMEOUT = 240
JOB_TIMEOUT = 600
INSTALLED_LINE = "[ray-pixi: installed "  # how a completed install's log ends
RAY_CLI = Path(sys.executable).with_name("ray")

Obj = dict[str, Any]
Log = Callable[[str], None]


def e2e_cluster(manifest: str, images: Mapping[str, str]) -> Obj:
    """`e2e/<manifest>`, a RayCluster the kind flow applies, as the replay runs it: each image
    it names replaced by the local image that stands in for it (`images`; nothing is pulled
    here), and Ray's usage stats off (a user's own settings: with them off, Ray's dashboard
    still tells usage-stats.ray.io once that they are, so the report goes to a closed port)."""
    cluster: Obj = yaml.safe_load((E2E_DIR / manifest).read_text())
    for template in cluster_templates(cluster):
        for container in template["spec"]["containers"]:
            image = container["image"]
            if image not in images:
                raise AssertionError(f"e2e/{manifest} names image {image}: no local stand-in "
                                     f"in {sorted(images)}")  # fmt: skip
            container["image"] = images[image]
            container["imagePullPolicy"] = "IfNotPresent"
            container.setdefault("env", []).extend([
                {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
                {"name": "RAY_USAGE_STATS_REPORT_URL", "value": "http://127.0.0.1:9/"},
            ])  # fmt: skip
    return cluster


def cluster_templates(cluster: Mapping[str, Any]) -> list[Obj]:
    """The pod templates of a RayCluster: the head group's, then each worker group's."""
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"],
            *(group["template"] for group in spec.get("workerGroupSpecs") or [])]  # fmt: skip


def kube_root_ca(cluster: KubeCluster, namespace: str) -> Obj:
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


def start_cluster(
    release: Release,
    namespace: str,
    manifest: Obj,
    replay: Replay,
    *,
    config_maps: Sequence[Obj] = (),
) -> list[RunningPod]:
    """Create `config_maps` and the RayCluster, then replay every Pod KubeRay built (head
    first) with Docker."""
    cluster, admin = release.cluster, release.admin
    objects = [kube_root_ca(cluster, namespace)]
    for body in config_maps:
        cluster.apply(body, namespace)
        name = body["metadata"]["name"]
        objects.append(dict(admin.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")))
    cluster.apply(manifest, namespace)
    spec = manifest["spec"]
    count = 1 + sum(int(g.get("replicas", 0)) for g in spec.get("workerGroupSpecs") or [])
    pods = wait_for_pods(admin, namespace, manifest["metadata"]["name"], count)
    services = admin.get(f"/api/v1/namespaces/{namespace}/services")["items"]
    token = cluster.service_account_token(namespace, "default")
    started = time.monotonic()
    running = replay.start(pods, services=services, config_maps=objects,
                           tokens={"default": token})  # fmt: skip
    replay.log(f"replay: Pods' containers started in {time.monotonic() - started:.1f} s")
    return running


def ray_container(pod: RunningPod) -> str:
    """The Ray container's name (`containers[0]`, as KubeRay and the add-on take it)."""
    return str(pod.pod["spec"]["containers"][0]["name"])


def container_env(pod: RunningPod, container: str | None = None) -> dict[str, str]:
    """The plain `value` env vars of a container as the Pod declares them (after the
    webhook), e.g. where the add-on put the store: `RAY_PIXI_STORE_DIR`."""
    name = container or ray_container(pod)
    (spec,) = [c for c in pod.pod["spec"]["containers"] if c["name"] == name]
    return {e["name"]: e["value"] for e in spec.get("env") or [] if "value" in e}


def host_path_of(pod: RunningPod, path: str, container: str | None = None) -> Path:
    """Where a path inside the container lives on this host, through the container's
    emptyDir mounts (the deepest mount that holds it)."""
    name = container or ray_container(pod)
    (spec,) = [c for c in pod.pod["spec"]["containers"] if c["name"] == name]
    volumes = {v["name"]: v for v in pod.pod["spec"].get("volumes") or []}
    target = PurePosixPath(path)
    best: tuple[PurePosixPath, Obj] | None = None
    for mount in spec.get("volumeMounts") or []:
        where = PurePosixPath(mount["mountPath"])
        if target.is_relative_to(where) and (best is None or len(where.parts) > len(best[0].parts)):
            best = (where, mount)
    if best is None:
        raise AssertionError(f"{path} is on no volume of {pod.name}/{name}")
    where, mount = best
    volume = volumes[mount["name"]]
    if "emptyDir" not in volume:
        raise AssertionError(f"{path} is on volume {mount['name']}, not an emptyDir: {volume}")
    return pod.host_path(mount["name"]) / mount.get("subPath", "") / target.relative_to(where)


def store_dir(pod: RunningPod) -> Path:
    """The host directory behind the Ray container's ray-pixi store (`RAY_PIXI_STORE_DIR`)."""
    return host_path_of(pod, container_env(pod)["RAY_PIXI_STORE_DIR"])


def install_logs(pod: RunningPod) -> list[Path]:
    """The install logs in the Pod's store (`<store>/logs/install-<key>-<time>-<pid>.log`)."""
    return sorted((store_dir(pod) / "logs").glob("install-*.log"))


def completed_installs(pod: RunningPod) -> list[Path]:
    """The install logs of completed installs: their last line is the plugin's summary."""
    done = []
    for log in install_logs(pod):
        lines = log.read_text(errors="replace").splitlines()
        if lines and lines[-1].startswith(INSTALLED_LINE):
            done.append(log)
    return done


def process_ids(pod: RunningPod, title: str, container: str | None = None) -> list[int]:
    """PIDs (in the container's PID namespace) whose command line starts with `title`, e.g.
    `ray::RuntimeEnvAgent`, which Ray sets as its runtime_env agent's process title."""
    code = (
        "import os, sys\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        line = open(f'/proc/{p}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if p.isdigit() and line.startswith(sys.argv[1].encode()):\n"
        "        print(p)\n"
    )
    found = pod.exec(container or ray_container(pod), "python", "-c", code, title)
    assert found.returncode == 0, found.stderr
    return [int(p) for p in found.stdout.split()]


def alive_nodes(head: RunningPod) -> list[Obj]:
    """The Ray nodes the head's state API reports alive (none while the dashboard starts).

    Read as plain JSON rather than through `ray.util.state`: the tests' Ray client cannot
    parse an older head's node records (Ray 2.9 has no `state_message`), and the failure
    tests run a Ray below the plugin's floor."""
    url = f"http://{head.ip}:{DASHBOARD_PORT}/api/v0/nodes?limit=1000"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the Pod's IP
            nodes = json.load(answer)["data"]["result"]["result"]
    except Exception:  # noqa: BLE001 - not up yet (connection refused, 503): keep polling
        return []
    return [n for n in nodes if n.get("state") == "ALIVE"]


def wait_for_nodes(pods: Sequence[RunningPod], *, not_ids: Sequence[str] = ()) -> list[Obj]:
    """Poll until one alive Ray node runs at each Pod's IP (none of them in `not_ids`)."""
    head = pods[0]

    def ready() -> list[Obj] | None:
        nodes = [n for n in alive_nodes(head) if n["node_id"] not in not_ids]
        return nodes if sorted(n["node_ip"] for n in nodes) == sorted(p.ip for p in pods) \
            else None

    def describe() -> str:
        logs = "\n".join(f"{p.name} log:\n{p.logs(ray_container(p))[-2000:]}" for p in pods)
        return f"nodes {alive_nodes(head)}\n{logs}"

    return poll(ready, timeout=RAY_UP_TIMEOUT, what=f"{len(pods)} alive Ray nodes",
                describe=describe)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Job:
    """A finished job: its id, final status, logs and the `RESULT` line's JSON (if any)."""

    id: str
    status: str
    logs: str
    seconds: float

    @property
    def result(self) -> Obj:
        lines = [line for line in self.logs.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, f"job {self.id} ({self.status}), no RESULT:\n{self.logs[-4000:]}"
        return dict(json.loads(lines[0].removeprefix("RESULT ")))


def submit_job(
    head: RunningPod,
    entrypoint: Sequence[str],
    *,
    submission_id: str,
    working_dir: Path | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    timeout: float = JOB_TIMEOUT,
) -> Job:
    """`ray job submit` to the head's dashboard from this process, as a user submits a job;
    then wait for it to end (Jobs API) and return what it printed."""
    from ray.job_submission import JobSubmissionClient

    address = f"http://{head.ip}:{DASHBOARD_PORT}"
    argv = [str(RAY_CLI), "job", "submit", "--address", address, "--no-wait",
            "--submission-id", submission_id]  # fmt: skip
    if working_dir is not None:
        argv += ["--working-dir", str(working_dir)]
    if runtime_env is not None:
        argv += ["--runtime-env-json", json.dumps(runtime_env)]
    started = time.monotonic()
    submitted = subprocess.run([*argv, "--", *entrypoint], capture_output=True, text=True,
                               timeout=300)  # fmt: skip
    assert submitted.returncode == 0, (
        f"{shlex.join(argv)} failed:\n{submitted.stdout[-2000:]}{submitted.stderr[-2000:]}"
    )
    client = JobSubmissionClient(address)
    status = poll(
        lambda: (s := client.get_job_status(submission_id)).is_terminal() and s,
        timeout=timeout,
        what=f"job {submission_id} to finish",
        describe=lambda: client.get_job_logs(submission_id)[-3000:],
    )
    return Job(submission_id, str(status.value), client.get_job_logs(submission_id),
               time.monotonic() - started)
