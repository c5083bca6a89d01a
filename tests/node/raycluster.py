"""A labelled RayCluster on the real node, its Pods, and jobs through the head's Jobs API.

The shared steps of the node tests: the RayCluster a user writes (the manifests the kind
flow applies, `e2e/raycluster*.yaml`, with local images standing in for Docker Hub's), the
Pods KubeRay builds for it after the add-on's webhook, run by the kubelet, the Ray nodes they
form, and jobs submitted with `ray job submit` from this process to the dashboard behind the
head's Service. Where the add-on put things (volume, store, pixi) is read from the Pods, not
assumed; what is on a Pod's emptyDir is read where the kubelet keeps it on this machine.
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
from kube.manifests import cluster_pods
from kube.rest import ApiError, poll

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
    "NodePod",
    "Timings",
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
E2E_DIR = Path(__file__).resolve().parents[2] / "e2e"  # the scenario's manifests
JOBS_DIR = E2E_DIR / "job"  # the jobs' scripts (e2e/job): a working_dir
# The Ray images the kind flow pulls, for which the node tier uses its own (node/images.py).
E2E_RAY_IMAGE = "rayproject/ray:{ray}-py{python}"
DASHBOARD_PORT = 8265
RAY_UP_TIMEOUT = 240
JOB_TIMEOUT = 600
INSTALLED_LINE = "[ray-pixi: installed "  # how a completed install's log ends
RAY_CLI = Path(sys.executable).with_name("ray")

Obj = dict[str, Any]
Log = Callable[[str], None]


def e2e_cluster(manifest: str, images: Mapping[str, str]) -> Obj:
    """`e2e/<manifest>`, a RayCluster the kind flow applies, as the node runs it: each image
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


class Timings:
    """What each step of a scenario took, printed as it goes (speed is measured, never
    asserted): each step's time, and the whole scenario's with `total`."""

    def __init__(self, label: str = "node") -> None:
        self.label = label
        self.started = self.last = time.monotonic()

    def mark(self, what: str) -> None:
        now = time.monotonic()
        print(f"{self.label}: {what} in {now - self.last:.1f} s "
              f"({now - self.started:.0f} s in all)", flush=True)  # fmt: skip
        self.last = now

    def total(self, what: str) -> None:
        print(f"{self.label}: {what}: {time.monotonic() - self.started:.1f} s in all", flush=True)


@dataclasses.dataclass
class NodePod:
    """A Pod the kubelet runs: its latest object, exec and logs through the API server, and
    its emptyDir volumes where the kubelet keeps them on this machine."""

    cluster: KubeCluster
    pod: Obj

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def ip(self) -> str:
        return str(self.pod["status"]["podIP"])

    def refresh(self) -> NodePod:
        self.pod = dict(self.cluster.rest().get(
            f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"))  # fmt: skip
        return self

    def host_path(self, volume: str) -> Path:
        """Where the kubelet keeps the Pod's emptyDir `volume` on this machine."""
        assert self.cluster.node is not None
        uid = self.pod["metadata"]["uid"]
        return (self.cluster.node.workdir / "kubelet" / "pods" / uid / "volumes"
                / "kubernetes.io~empty-dir" / volume)  # fmt: skip

    def exec(self, container: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the container through the API server (`kubectl exec`)."""
        from kubernetes import client
        from kubernetes.stream import stream

        with self.cluster.api_client() as api:
            session = stream(
                client.CoreV1Api(api).connect_get_namespaced_pod_exec, self.name,
                self.namespace, container=container, command=list(argv), stderr=True,
                stdin=False, stdout=True, tty=False, _preload_content=False,
            )  # fmt: skip
            stdout, stderr = [], []
            while session.is_open():
                session.update(timeout=1)
                stdout.append(session.read_stdout())
                stderr.append(session.read_stderr())
            session.close()
            code = session.returncode
        return subprocess.CompletedProcess(list(argv), code if code is not None else -1,
                                           "".join(stdout), "".join(stderr))  # fmt: skip

    def logs(self, container: str, *, previous: bool = False) -> str:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/log"
        try:
            return self.cluster.rest().request_raw(
                "GET", path, params={"container": container, "previous": str(previous).lower()}
            ).decode(errors="replace")
        except ApiError as error:
            return f"(no log: {error})"

    def container_status(self, container: str, *, init: bool = False) -> Obj:
        key = "initContainerStatuses" if init else "containerStatuses"
        for status in self.pod["status"].get(key) or []:
            if status["name"] == container:
                return dict(status)
        raise AssertionError(f"{self.name} has no status for container {container}")

    def ready(self) -> bool:
        conditions = self.pod.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def start_cluster(
    cluster: KubeCluster, namespace: str, manifest: Obj, *, config_maps: Sequence[Obj] = (),
    timeout: float = RAY_UP_TIMEOUT,
) -> list[NodePod]:  # fmt: skip
    """Create `config_maps` and the RayCluster, then wait until every Pod KubeRay built is
    Ready by KubeRay's own probes; head first."""
    for body in config_maps:
        cluster.apply(body, namespace)
    cluster.apply(manifest, namespace)
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    count = 1 + sum(int(g.get("replicas", 0)) for g in spec.get("workerGroupSpecs") or [])
    return wait_for_ready_pods(cluster, namespace, name, count, timeout=timeout)


def wait_for_ready_pods(cluster: KubeCluster, namespace: str, name: str, count: int, *,
                        timeout: float = RAY_UP_TIMEOUT, not_uids: Sequence[str] = ()
                        ) -> list[NodePod]:  # fmt: skip
    admin = cluster.rest()

    def pods() -> list[NodePod]:
        found = [NodePod(cluster, p) for p in cluster_pods(admin, namespace, name)
                 if p["metadata"]["uid"] not in not_uids
                 and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return sorted(found, key=lambda p: p.pod["metadata"]["labels"].get("ray.io/node-type")
                      != "head")  # fmt: skip

    def ready() -> list[NodePod] | None:
        found = pods()
        return found if len(found) == count and all(p.ready() for p in found) else None

    def describe() -> str:
        return "; ".join(
            f"{p.name}: {p.pod['status'].get('phase')} "
            f"{[(s['name'], s.get('state'), s.get('restartCount')) for s in (p.pod['status'].get('initContainerStatuses') or []) + (p.pod['status'].get('containerStatuses') or [])]}"  # noqa: E501
            for p in pods()
        )

    return poll(ready, timeout=timeout, what=f"{count} Ready Pods of RayCluster {name}",
                interval=1, describe=describe)  # fmt: skip


def dashboard_address(cluster: KubeCluster, namespace: str, name: str) -> str:
    """The head's dashboard through its Service: the ClusterIP (kube-proxy), or for KubeRay's
    headless head Service its endpoint (what the Service's DNS name resolves to)."""
    admin = cluster.rest()
    service = admin.get(f"/api/v1/namespaces/{namespace}/services/{name}-head-svc")
    ip = service["spec"].get("clusterIP")
    if ip and ip != "None":
        return f"http://{ip}:{DASHBOARD_PORT}"
    slices = admin.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                       labelSelector=f"kubernetes.io/service-name={name}-head-svc")
    for endpoint_slice in slices["items"]:
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                return f"http://{endpoint['addresses'][0]}:{DASHBOARD_PORT}"
    raise AssertionError(f"Service {name}-head-svc has no ready endpoint")


def ray_container(pod: NodePod) -> str:
    """The Ray container's name (`containers[0]`, as KubeRay and the add-on take it)."""
    return str(pod.pod["spec"]["containers"][0]["name"])


def container_env(pod: NodePod, container: str | None = None) -> dict[str, str]:
    """The plain `value` env vars of a container as the Pod declares them (after the
    webhook), e.g. where the add-on put the store: `RAY_PIXI_STORE_DIR`."""
    name = container or ray_container(pod)
    (spec,) = [c for c in pod.pod["spec"]["containers"] if c["name"] == name]
    return {e["name"]: e["value"] for e in spec.get("env") or [] if "value" in e}


def host_path_of(pod: NodePod, path: str, container: str | None = None) -> Path:
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


def store_dir(pod: NodePod) -> Path:
    """The host directory behind the Ray container's ray-pixi store (`RAY_PIXI_STORE_DIR`)."""
    return host_path_of(pod, container_env(pod)["RAY_PIXI_STORE_DIR"])


def install_logs(pod: NodePod) -> list[Path]:
    """The install logs in the Pod's store (`<store>/logs/install-<key>-<time>-<pid>.log`)."""
    return sorted((store_dir(pod) / "logs").glob("install-*.log"))


def completed_installs(pod: NodePod) -> list[Path]:
    """The install logs of completed installs: their last line is the plugin's summary."""
    done = []
    for log in install_logs(pod):
        lines = log.read_text(errors="replace").splitlines()
        if lines and lines[-1].startswith(INSTALLED_LINE):
            done.append(log)
    return done


def process_ids(pod: NodePod, title: str, container: str | None = None) -> list[int]:
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


def alive_nodes(address: str) -> list[Obj]:
    """The Ray nodes the head's state API reports alive (none while the dashboard starts).

    Read as plain JSON rather than through `ray.util.state`: the tests' Ray client cannot
    parse an older head's node records (Ray 2.9 has no `state_message`), and the failure
    tests run a Ray below the plugin's floor."""
    url = f"{address}/api/v0/nodes?limit=1000"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the Pod's IP
            nodes = json.load(answer)["data"]["result"]["result"]
    except Exception:  # noqa: BLE001 - not up yet (connection refused, 503): keep polling
        return []
    return [n for n in nodes if n.get("state") == "ALIVE"]


def wait_for_nodes(address: str, pods: Sequence[NodePod], *, not_ids: Sequence[str] = ()
                   ) -> list[Obj]:  # fmt: skip
    """Poll until one alive Ray node runs at each Pod's IP (none of them in `not_ids`)."""

    def ready() -> list[Obj] | None:
        nodes = [n for n in alive_nodes(address) if n["node_id"] not in not_ids]
        return nodes if sorted(n["node_ip"] for n in nodes) == sorted(p.ip for p in pods) \
            else None

    def describe() -> str:
        logs = "\n".join(f"{p.name} log:\n{p.logs(ray_container(p))[-2000:]}" for p in pods)
        return f"nodes {alive_nodes(address)}\n{logs}"

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
    address: str,
    entrypoint: Sequence[str],
    *,
    submission_id: str,
    working_dir: Path | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    timeout: float = JOB_TIMEOUT,
) -> Job:
    """`ray job submit` to the head's dashboard (`address`, see `dashboard_address`) from this
    process, as a user submits a job; then wait for it to end (Jobs API) and return what it
    printed."""
    from ray.job_submission import JobSubmissionClient

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
