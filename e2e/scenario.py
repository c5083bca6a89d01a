"""The end-to-end scenario, written once for any cluster: kind (`e2e/run`) and the node tier's
real kubelet (`tests/node/test_e2e_scenario.py`) run this code, each with its own `Cluster`.

On a cluster where KubeRay and the ray-pixi chart already run, in a namespace that exists:

1. `raycluster.yaml` (labelled; head and one worker) becomes Ready by KubeRay's probes, and
   KubeRay calls it ready. Each Pod ran the payload init container (non-root, read-only, no
   capabilities); its runtime_env agent imports ray_pixi from the payload on the volume
   (`python -m ray_pixi.cli doctor` in each Ray container) and the Ray image alone has none;
   `ray status` names each node by its group.
2. An inline job (`job/probe_job.py`: a plain task, a task and an actor on every node) runs
   its tasks and actors in a pixi environment under the store on each Pod's volume: the
   env's Python, `pyjokes` from the env, the activation package's activate.d variable, and
   nothing of the payload importable. One install per node.
3. A project job (the working_dir is a pixi project, `job/pixi.toml.in`, with an editable
   local package): its driver, tasks and actors run in the project environment. One more
   install per node, in its runtime_env agent.
4. Both jobs again: the same environments, no install at all.
5. The worker's Ray container restarted (`ray stop --force`; the kubelet restarts it on the
   same volume): the next job runs in the same environment, installing nothing.
6. Failure clusters, head-only: an unsupported Ray (`raycluster-unsupported-ray.yaml`) and a
   read-only store (`raycluster-read-only-store.yaml`) fail pixi tasks and actors with the
   reason, plain tasks run, and the Ray container never restarts.
7. `rayjob.yaml`, a labelled RayJob: KubeRay copies the label onto the RayCluster it creates,
   the webhook prepares it, and its entrypoint's task runs in an inline environment.

What a cluster provides (`Cluster`): the Kubernetes API (a kubeconfig), the images its nodes
have for the manifests' images, a hook that adapts each RayCluster (the node tier adds its
offline site), the objects each namespace needs first (the site's ConfigMaps), the address
of a head's Jobs API (the node tier: the head Service's ClusterIP, through kube-proxy; kind:
`kubectl port-forward` to that Service), the activation package of its conda channel, and
optionally how to lock the project. The store on a Pod's volume is read by exec in its Ray
container, the same on every cluster. Jobs are submitted with the Jobs API's HTTP routes
(what `ray job submit` does), so the machine that runs this needs no Ray: only the
`kubernetes` client and PyYAML.

Every check raises `ScenarioFailure` saying what was seen; `run` returns a `Report` for the
checks only one kind of cluster can make.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import re
import secrets
import shlex
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml

__all__ = [
    "E2E_DIR",
    "JOB_DIR",
    "PROJ",
    "Activation",
    "Cluster",
    "Jobs",
    "Report",
    "ScenarioFailure",
    "run",
]

E2E_DIR = Path(__file__).resolve().parent
JOB_DIR = E2E_DIR / "job"  # the jobs' scripts and the project's template: a working_dir

# The add-on's names (ray_pixi_operator.names; the unit tests check they agree).
ENABLED_LABEL = "ray-pixi.io/enabled"
ENABLED_VALUE = "true"
INJECTION_ANNOTATION = "ray-pixi.io/injection"
VOLUME_NAME = "ray-pixi"
INIT_CONTAINER_NAME = "ray-pixi-payload"
STORE_ENV = "RAY_PIXI_STORE_DIR"
PIXI_ENV = "RAY_PIXI_EXE"
INSTALLED_LINE = "[ray-pixi: installed "  # how a completed install's log ends
AGENT = "ray::RuntimeEnvAgent"  # the title Ray gives its runtime_env agent process
RAY_UID = 1000  # the Ray images' user

PROBE = "probe_job.py"
PYJOKES = "0.8.3"
PROJECT_PACKAGE = "e2e_pkg"  # the project's editable local package (job/src/e2e_pkg)
PROJECT_INCLUDE = ["pyproject.toml", "src/**"]
DASHBOARD_PORT = 8265
POD_TIMEOUT = 900
JOB_TIMEOUT = 900

Obj = dict[str, Any]
T = TypeVar("T")


class ScenarioFailure(AssertionError):
    """A step of the scenario saw something other than what it expects."""


def expect(condition: object, message: str | Callable[[], str]) -> None:
    if not condition:
        raise ScenarioFailure(message() if callable(message) else message)


def poll(check: Callable[[], T | None | bool], *, timeout: float, what: str,
         interval: float = 2, describe: Callable[[], str] | None = None) -> T:  # fmt: skip
    """Call `check` until it returns something truthy; fail after `timeout` with `describe`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            state = f"; last seen: {describe()}" if describe else ""
            raise ScenarioFailure(f"timed out after {timeout:.0f} s waiting for {what}{state}")
        time.sleep(interval)


@dataclasses.dataclass(frozen=True)
class Activation:
    """A conda package of the cluster's channel whose activate.d script sets `variable` to
    `value` (`{prefix}` stands for the environment's prefix)."""

    package: str
    variable: str
    value: str

    def expected(self, prefix: str) -> str:
        return self.value.replace("{prefix}", prefix)


# conda-forge's proj: its activate.d script sets PROJ_DATA.
PROJ = Activation("proj", "PROJ_DATA", "{prefix}/share/proj")


@dataclasses.dataclass
class Cluster:
    """What the scenario needs of a cluster (see the module's docstring)."""

    kubeconfig: Path | None  # None: the default ($KUBECONFIG, ~/.kube/config)
    # (namespace, RayCluster name) -> the base URL of its head's Jobs API, while in the block.
    jobs_address: Callable[[str, str], contextlib.AbstractContextManager[str]]
    images: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # A RayCluster (or {"spec": <a RayJob's rayClusterSpec>}) -> what to create instead.
    adapt: Callable[[Obj], Obj] = copy.deepcopy
    namespace_objects: Callable[[str], list[Obj]] = lambda namespace: []
    activation: Activation = PROJ
    lock_project: Callable[[Path], None] | None = None  # None: the project is not locked
    log: Callable[[str], None] = print


# --- Kubernetes ---------------------------------------------------------------------------------


class Kube:
    """The few API calls the scenario makes, as plain dicts (camelCase, as in manifests)."""

    def __init__(self, kubeconfig: Path | None) -> None:
        from kubernetes import client, config

        self.configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None,
            client_configuration=self.configuration)  # fmt: skip
        self.client = client.ApiClient(self.configuration)
        self.core = client.CoreV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    def _plain(self, obj: Any) -> Obj:
        plain: Obj = self.client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return plain

    def create(self, namespace: str, body: Obj) -> None:
        if body["kind"] == "ConfigMap":
            self.core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
            return
        group, version = body["apiVersion"].split("/")
        plural = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}[body["kind"]]
        self.custom.create_namespaced_custom_object(group, version, namespace, plural, body)

    def ray_object(self, namespace: str, plural: str, name: str) -> Obj:
        found: Obj = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
            "ray.io", "v1", namespace, plural, name)  # fmt: skip
        return found

    def delete_ray_cluster(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters",
                                                    name)  # fmt: skip
        poll(lambda: not self.pods(namespace, f"ray.io/cluster={name}"), timeout=300,
             what=f"the Pods of RayCluster {name} to go")  # fmt: skip

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        found = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self._plain(p) for p in found]

    def pod(self, namespace: str, name: str) -> Obj:
        return self._plain(self.core.read_namespaced_pod(name, namespace))

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str]
             ) -> tuple[int, str, str]:  # fmt: skip
        """`kubectl exec`: the exit code, stdout and stderr of `argv` in the container."""
        from kubernetes import client
        from kubernetes.stream import stream

        with client.ApiClient(self.configuration) as api:  # stream() patches its client
            session = stream(
                client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace,
                container=container, command=list(argv), stderr=True, stdin=False,
                stdout=True, tty=False, _preload_content=False,
            )  # fmt: skip
            out, err = [], []
            while session.is_open():
                session.update(timeout=1)
                out.append(session.read_stdout())
                err.append(session.read_stderr())
            session.close()
            code = session.returncode
        return (code if code is not None else -1), "".join(out), "".join(err)


@dataclasses.dataclass
class RayPod:
    """A Ray Pod KubeRay built: its latest object, and exec in its Ray container."""

    kube: Kube
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

    @property
    def container(self) -> str:
        """The Ray container (`containers[0]`, as KubeRay and the add-on take it)."""
        return str(self.pod["spec"]["containers"][0]["name"])

    @property
    def env(self) -> dict[str, str]:
        """The Ray container's plain env vars as the Pod declares them (after the webhook)."""
        spec = self.pod["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in spec.get("env") or [] if "value" in e}

    @property
    def store(self) -> str:
        return self.env[STORE_ENV]

    @property
    def volume(self) -> str:
        """Where the Ray container mounts the add-on's volume."""
        spec = self.pod["spec"]["containers"][0]
        mounts = [m["mountPath"] for m in spec.get("volumeMounts") or []
                  if m["name"] == VOLUME_NAME]  # fmt: skip
        expect(mounts, f"{self.name}: the Ray container does not mount volume {VOLUME_NAME}")
        return str(mounts[0])

    def refresh(self) -> RayPod:
        self.pod = self.kube.pod(self.namespace, self.name)
        return self

    def status(self, container: str | None = None, *, init: bool = False) -> Obj:
        key = "initContainerStatuses" if init else "containerStatuses"
        name = container or self.container
        for status in self.pod["status"].get(key) or []:
            if status["name"] == name:
                return dict(status)
        raise ScenarioFailure(f"{self.name} has no status for container {name}")

    def ready(self) -> bool:
        conditions = self.pod.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def exec(self, *argv: str) -> tuple[int, str, str]:
        return self.kube.exec(self.namespace, self.name, self.container, argv)

    def run(self, *argv: str) -> str:
        """`argv` in the Ray container, which must succeed; its stdout."""
        code, out, err = self.exec(*argv)
        expect(code == 0, lambda: f"{self.name}: {shlex.join(argv)} exited {code}: {out}{err}")
        return out

    def python(self, code: str, *args: str) -> Any:
        """The JSON a Python snippet prints in the Ray container."""
        return json.loads(self.run("python", "-c", code, *args))


# What a Pod's store holds: {install log name: completed}, read in its Ray container.
_INSTALLS = """
import glob, json, os, sys
logs = {}
for log in sorted(glob.glob(os.path.join(sys.argv[1], "logs", "install-*.log"))):
    lines = open(log, errors="replace").read().splitlines()
    logs[os.path.basename(log)] = bool(lines) and lines[-1].startswith(sys.argv[2])
print(json.dumps(logs))
"""
# PIDs (in the container's PID namespace) whose command line starts with argv[1].
_PROCESSES = """
import json, os, sys
found = []
for p in os.listdir("/proc"):
    try:
        line = open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        continue
    if p.isdigit() and line.startswith(sys.argv[1].encode()):
        found.append(int(p))
print(json.dumps(found))
"""
# The interpreter, Ray and the process's user of the Ray image; where ray_pixi imports from.
_IMAGE = """
import importlib.util, json, os, platform, sys, ray
found = importlib.util.find_spec("ray_pixi")
print(json.dumps({"python": platform.python_version(), "prefix": sys.prefix,
                  "ray": ray.__version__, "uid": os.getuid(),
                  "ray_pixi": found.origin if found else None}))
"""
# The payload's pixi (RAY_PIXI_EXE is its launcher bin/pixi, which runs <arch>/pixi).
_PAYLOAD_PIXI = """
import hashlib, json, os, platform, sys
pixi = os.path.join(os.path.dirname(os.path.dirname(sys.argv[1])), platform.machine(), "pixi")
print(json.dumps({"path": pixi, "sha256": hashlib.sha256(open(pixi, "rb").read()).hexdigest(),
                  "uid": os.stat(pixi).st_uid}))
"""


def installs(pod: RayPod) -> dict[str, bool]:
    """The install logs in the Pod's store (`<store>/logs/install-<key>-<time>-<pid>.log`),
    each with whether it completed (its last line is the plugin's summary)."""
    return dict(pod.python(_INSTALLS, pod.store, INSTALLED_LINE))


def process_ids(pod: RayPod, title: str) -> list[int]:
    return list(pod.python(_PROCESSES, title))


def is_environment(pod: RayPod, prefix: str) -> bool:
    """`prefix` is an installed conda environment on the Pod's filesystem."""
    return pod.exec("test", "-d", f"{prefix}/conda-meta")[0] == 0


# --- the Jobs API -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """A finished job: its id, final status, logs and the `RESULT` line's JSON."""

    id: str
    status: str
    logs: str
    seconds: float

    @property
    def result(self) -> Obj:
        lines = [line for line in self.logs.splitlines() if line.startswith("RESULT ")]
        expect(len(lines) == 1,
               lambda: f"job {self.id} ({self.status}), no RESULT:\n{self.logs[-4000:]}")
        return dict(json.loads(lines[0].removeprefix("RESULT ")))


# The head is reached directly (its Service, or a port-forward): never through a proxy that the
# environment names for the internet.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Jobs:
    """The head's Jobs API over HTTP, as `ray job submit` uses it: the working_dir zipped and
    PUT as a `gcs://` package, then the job POSTed, polled and its logs read."""

    def __init__(self, address: str) -> None:
        self.address = address.rstrip("/")

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json") -> bytes:  # fmt: skip
        request = urllib.request.Request(  # noqa: S310 - the head's http:// address
            self.address + path, data=body, method=method,
            headers={"Content-Type": content_type})  # fmt: skip
        try:
            with _DIRECT.open(request, timeout=120) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as error:
            raise ScenarioFailure(f"{method} {self.address}{path}: {error.code} "
                                  f"{error.read().decode(errors='replace')[-2000:]}") from None

    def upload(self, directory: Path) -> str:
        """The directory as a working_dir package in the cluster; its `gcs://` URI."""
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(directory.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(directory).as_posix())
        package = f"_ray_pkg_{hashlib.sha256(data.getvalue()).hexdigest()[:40]}.zip"
        self._request("PUT", f"/api/packages/gcs/{package}", data.getvalue(),
                      "application/octet-stream")  # fmt: skip
        return f"gcs://{package}"

    def status(self, submission_id: str) -> str:
        return str(json.loads(self._request("GET", f"/api/jobs/{submission_id}"))["status"])

    def logs(self, submission_id: str) -> str:
        return str(json.loads(self._request("GET", f"/api/jobs/{submission_id}/logs"))["logs"])

    def submit(self, name: str, entrypoint: Sequence[str], *, working_dir: Path | None = None,
               runtime_env: Mapping[str, Any] | None = None, timeout: float = JOB_TIMEOUT,
               ) -> Job:  # fmt: skip
        """Submit a job, wait for it to end, and return what it printed."""
        submission_id = f"{name}-{secrets.token_hex(3)}"
        env = dict(runtime_env or {})
        if working_dir is not None:
            env["working_dir"] = self.upload(working_dir)
        body = {"entrypoint": shlex.join(entrypoint), "submission_id": submission_id,
                "runtime_env": env}  # fmt: skip
        started = time.monotonic()
        self._request("POST", "/api/jobs/", json.dumps(body).encode())
        status = poll(
            lambda: (s := self.status(submission_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
            timeout=timeout, what=f"job {submission_id} to finish",
            describe=lambda: self.logs(submission_id)[-3000:],
        )  # fmt: skip
        return Job(submission_id, status, self.logs(submission_id), time.monotonic() - started)

    def succeeded(self, name: str, entrypoint: Sequence[str], **options: Any) -> Job:
        job = self.submit(name, entrypoint, **options)
        expect(job.status == "SUCCEEDED", lambda: f"job {job.id}: {job.status}\n{job.logs[-4000:]}")
        return job

    def alive_nodes(self) -> list[Obj]:
        """The Ray nodes the head's state API reports alive (none while the dashboard
        starts). Plain JSON: Ray 2.9's node records are what a newer client cannot parse."""
        try:
            nodes = json.loads(self._request("GET", "/api/v0/nodes?limit=1000"))
        except (ScenarioFailure, OSError, ValueError):
            return []
        return [n for n in nodes["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, pods: Sequence[RayPod], *, not_ids: Sequence[str] = ()
                       ) -> list[Obj]:  # fmt: skip
        """One alive Ray node at each Pod's IP, and none of `not_ids` alive any more: Ray
        declares a stopped raylet dead only after missed health checks, and until then a job
        that pins a task to every alive node pins one to it."""

        def ready() -> list[Obj] | None:
            nodes = self.alive_nodes()
            if any(n["node_id"] in not_ids for n in nodes):
                return None
            found = sorted(n["node_ip"] for n in nodes)
            return nodes if found == sorted(p.ip for p in pods) else None

        return poll(ready, timeout=POD_TIMEOUT, what=f"{len(pods)} alive Ray nodes",
                    describe=lambda: str(self.alive_nodes()))  # fmt: skip


def probe(module: str | None, runtime_env: Mapping[str, Any] | None,
          variable: str | None = None) -> list[str]:  # fmt: skip
    """The entrypoint of `job/probe_job.py`."""
    request = {"module": module, "runtime_env": runtime_env, "variable": variable}
    return ["python", PROBE, json.dumps(request)]


# --- the scenario -------------------------------------------------------------------------------


class Timings:
    """What each step took, printed as it goes (measured, never asserted)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.started = self.last = time.monotonic()

    def mark(self, what: str) -> None:
        now = time.monotonic()
        self.log(f"e2e: {what} in {now - self.last:.1f} s ({now - self.started:.0f} s in all)")
        self.last = now


@dataclasses.dataclass
class Report:
    """What the scenario saw, for checks that only one kind of cluster can make."""

    pods: dict[str, Obj] = dataclasses.field(default_factory=dict)  # role/cluster -> its Pod
    image: dict[str, Any] = dataclasses.field(default_factory=dict)  # the Ray image's facts
    payload_pixi: dict[str, Obj] = dataclasses.field(default_factory=dict)  # role -> pixi seen
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # part -> duration


def load(manifest: str, cluster: Cluster) -> Obj:
    """`e2e/<manifest>` (a RayCluster) as this cluster creates it: its images mapped, adapted."""
    return cluster.adapt(with_images(yaml.safe_load((E2E_DIR / manifest).read_text()),
                                     cluster.images))  # fmt: skip


def templates(ray_cluster: Mapping[str, Any]) -> list[Obj]:
    """The Pod templates of a RayCluster: the head group's, then each worker group's."""
    spec = ray_cluster["spec"]
    return [spec["headGroupSpec"]["template"],
            *(group["template"] for group in spec.get("workerGroupSpecs") or [])]  # fmt: skip


def with_images(ray_cluster: Obj, images: Mapping[str, str]) -> Obj:
    """The RayCluster with each container's image replaced by the one the cluster has."""
    ray_cluster = copy.deepcopy(ray_cluster)
    for template in templates(ray_cluster):
        for container in template["spec"]["containers"]:
            container["image"] = images.get(container["image"], container["image"])
    return ray_cluster


def wait_for_ready_pods(kube: Kube, namespace: str, name: str, count: int, *,
                        not_uids: Sequence[str] = ()) -> list[RayPod]:  # fmt: skip
    """The `count` Pods of RayCluster `name`, all Ready by KubeRay's probes; head first."""

    def pods() -> list[RayPod]:
        found = [RayPod(kube, p) for p in kube.pods(namespace, f"ray.io/cluster={name}")
                 if p["metadata"]["uid"] not in not_uids
                 and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return sorted(found, key=lambda p: p.pod["metadata"]["labels"].get("ray.io/node-type")
                      != "head")  # fmt: skip

    def ready() -> list[RayPod] | None:
        found = pods()
        return found if len(found) == count and all(p.ready() for p in found) else None

    def describe() -> str:
        return "; ".join(
            f"{p.name}: {p.pod['status'].get('phase')} "
            + str([(s["name"], s.get("state"), s.get("restartCount"))
                   for s in (p.pod["status"].get("initContainerStatuses") or [])
                   + (p.pod["status"].get("containerStatuses") or [])])  # fmt: skip
            for p in pods()
        )

    return poll(ready, timeout=POD_TIMEOUT, what=f"{count} Ready Pods of RayCluster {name}",
                describe=describe)  # fmt: skip


def start(kube: Kube, namespace: str, manifest: Obj) -> list[RayPod]:
    kube.create(namespace, manifest)
    spec = manifest["spec"]
    count = 1 + sum(int(g.get("replicas", 0)) for g in spec.get("workerGroupSpecs") or [])
    return wait_for_ready_pods(kube, namespace, manifest["metadata"]["name"], count)


def check_prepared(pod: RayPod) -> None:
    """The webhook prepared the Pod: the payload init container ran to completion non-root,
    read-only and without capabilities, and the Ray container names the store."""
    status = pod.status(INIT_CONTAINER_NAME, init=True)
    expect((status.get("state") or {}).get("terminated", {}).get("exitCode") == 0,
           f"{pod.name}: {INIT_CONTAINER_NAME} did not complete: {status}")  # fmt: skip
    (init,) = [c for c in pod.pod["spec"]["initContainers"] if c["name"] == INIT_CONTAINER_NAME]
    context = init.get("securityContext") or {}
    expect(context.get("readOnlyRootFilesystem") is True
           and (context.get("capabilities") or {}).get("drop") == ["ALL"]
           and context.get("allowPrivilegeEscalation") is False,
           f"{pod.name}: the init container's securityContext is {context}")  # fmt: skip
    expect(STORE_ENV in pod.env, f"{pod.name}: the Ray container has no {STORE_ENV}")
    expect(PurePosixPath(pod.store).is_relative_to(pod.volume),
           f"{pod.name}: the store {pod.store} is not on the volume at {pod.volume}")


def check_agent_uses_the_payload(pod: RayPod) -> list[int]:
    """The Pod's runtime_env agent imports ray_pixi from the add-on's volume (`doctor` reads
    the running agent's own environment), the Ray image alone has no ray_pixi, and the Ray
    user imports it from the volume; returns the agent's PIDs."""
    agents = process_ids(pod, AGENT)
    expect(len(agents) == 1, f"{pod.name}: runtime_env agents {agents}")
    doctor = pod.run("python", "-m", "ray_pixi.cli", "doctor")
    expect("Checking the runtime_env agent of the running Ray node" in doctor, doctor)
    found = re.search(r"imports ray_pixi \S+ from (\S+)", doctor)
    expect(found and PurePosixPath(found[1]).is_relative_to(pod.volume),
           f"{pod.name}: the agent does not import ray_pixi from {pod.volume}:\n{doctor}")
    code, _, err = pod.exec("env", "-u", "PYTHONPATH", "-u", "PYTHONUSERBASE",
                            "python", "-c", "import ray_pixi")  # fmt: skip
    expect(code != 0 and "No module named 'ray_pixi'" in err,
           f"{pod.name}: the Ray image itself has ray_pixi (it must come from the payload)")
    image = pod.python(_IMAGE)
    expect(image["uid"] == RAY_UID and image["ray_pixi"]
           and PurePosixPath(image["ray_pixi"]).is_relative_to(pod.volume),
           f"{pod.name}: the Ray user imports ray_pixi as {image}")  # fmt: skip
    return agents


def check_in_environment(pod: RayPod, seen: Mapping[str, Any], image: Mapping[str, Any],
                         activation: Activation) -> str:  # fmt: skip
    """What a worker in a pixi environment on `pod` saw: it ran there, with the
    environment's Python (the image's exact version), in an environment of the store on the
    Pod's volume, with the activation package's variable set. Returns its sys.prefix."""
    where = f"{pod.name} ({seen.get('ip')})"
    expect("error" not in seen, lambda: f"{where}: {seen.get('error')}")
    expect(seen["ip"] == pod.ip, f"{where} ran at {seen['ip']}, not on {pod.ip}")
    prefix = str(seen["prefix"])
    expect(PurePosixPath(prefix).is_relative_to(pod.store),
           f"{where}: sys.prefix {prefix} is not in the store {pod.store}")
    expect(PurePosixPath(seen["executable"]).is_relative_to(prefix),
           f"{where}: the worker's Python {seen['executable']} is not the env's")
    expect(seen["python"] == image["python"],
           f"{where}: Python {seen['python']}, the image's is {image['python']}")
    expect(seen["activated"] == activation.expected(prefix),
           f"{where}: {activation.variable}={seen['activated']!r}: "
           f"{activation.package}'s activate.d did not replay")
    return prefix


def payload_seen(pod: RayPod, seen: Mapping[str, Any]) -> list[str]:
    """What of the add-on's payload a worker could import: ray_pixi itself, sys.path entries
    on the ray-pixi volume outside the store, the Pod's declared PYTHONPATH entries."""
    declared = {e for e in pod.env.get("PYTHONPATH", "").split(":") if e}
    found = [f"ray_pixi from {seen['ray_pixi']}"] if seen["ray_pixi"] else []
    for entry in seen["path"]:
        path = PurePosixPath(entry or ".")
        if (path.is_relative_to(pod.volume) and not path.is_relative_to(pod.store)) \
                or entry in declared:
            found.append(f"sys.path entry {entry}")
    return found


def write_project(directory: Path, image: Mapping[str, Any], cluster: Cluster) -> bool:
    """The job folder with `pixi.toml` written from `pixi.toml.in` for the cluster's Python,
    Ray and activation package, locked if the cluster can lock; returns whether it is."""
    shutil.copytree(JOB_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    template = directory / "pixi.toml.in"
    text = (template.read_text().replace("@PYTHON_VERSION@", image["python"])
            .replace("@RAY_VERSION@", image["ray"])
            .replace("@ACTIVATION_PACKAGE@", cluster.activation.package))  # fmt: skip
    (directory / "pixi.toml").write_text(text)
    template.unlink()
    if cluster.lock_project is None:
        return False
    cluster.lock_project(directory)
    return True


def run(cluster: Cluster, namespace: str) -> Report:
    """The scenario on `cluster`, in `namespace` (which exists); raises ScenarioFailure."""
    kube = Kube(cluster.kubeconfig)
    report = Report()
    for body in cluster.namespace_objects(namespace):
        kube.create(namespace, body)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ray-pixi-e2e-") as work:
        _main_cluster(cluster, kube, namespace, report, Path(work))
    report.seconds["raycluster"] = time.monotonic() - started
    for manifest, expected in (
        ("raycluster-unsupported-ray.yaml", _unsupported_ray),
        ("raycluster-read-only-store.yaml", _read_only_store),
    ):
        started = time.monotonic()
        _failing_cluster(cluster, kube, namespace, report, manifest, expected)
        report.seconds[manifest] = time.monotonic() - started
    started = time.monotonic()
    _rayjob(cluster, kube, namespace, report)
    report.seconds["rayjob"] = time.monotonic() - started
    cluster.log("e2e: passed: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()))
    return report


def _main_cluster(cluster: Cluster, kube: Kube, namespace: str, report: Report,
                  work: Path) -> None:  # fmt: skip
    took = Timings(cluster.log)
    manifest = load("raycluster.yaml", cluster)
    expect(manifest["metadata"]["labels"].get(ENABLED_LABEL) == ENABLED_VALUE,
           "e2e/raycluster.yaml is not labelled for the add-on")  # fmt: skip
    name = manifest["metadata"]["name"]
    head, worker = start(kube, namespace, manifest)
    pods = {"head": head, "worker": worker}
    poll(lambda: (kube.ray_object(namespace, "rayclusters", name).get("status") or {})
         .get("state") == "ready", timeout=120, what=f"KubeRay to call {name} ready")
    with cluster.jobs_address(namespace, name) as address:
        jobs = Jobs(address)
        jobs.wait_for_nodes([head, worker])
        took.mark("RayCluster created, its Pods Ready by KubeRay's probes, both Ray nodes alive")

        # 1. What the add-on prepared, as each node's runtime_env agent sees it.
        agents = {}
        for role, pod in pods.items():
            check_prepared(pod)
            (volume,) = [v for v in pod.pod["spec"]["volumes"] if v["name"] == VOLUME_NAME]
            expect("emptyDir" in volume, f"{pod.name}: volume {VOLUME_NAME} is {volume}")
            agents[role] = check_agent_uses_the_payload(pod)
            report.payload_pixi[role] = pod.python(_PAYLOAD_PIXI, pod.env[PIXI_ENV])
        status = head.run("ray", "status")
        for pod in pods.values():
            group = pod.pod["metadata"]["labels"]["ray.io/group"]
            expect(f" 1 {group}\n" in status, f"`ray status` does not name {group}:\n{status}")
        image = report.image = head.python(_IMAGE)
        took.mark("each Pod prepared; each agent imports ray_pixi from the payload")

        # 2. The inline environment.
        activation = cluster.activation
        inline_env = {"pixi": {"dependencies": {activation.package: "*"},
                               "pypi_dependencies": {"pyjokes": f"=={PYJOKES}"}}}  # fmt: skip
        inline_entry = probe("pyjokes", inline_env, activation.variable)
        inline = jobs.succeeded("inline", inline_entry, working_dir=JOB_DIR)
        prefixes = {}
        for role, pod in pods.items():
            node = inline.result["nodes"][role]
            expect(node["plain"]["ip"] == pod.ip, f"the plain task for {role} ran elsewhere")
            expect(node["plain"]["prefix"] == image["prefix"],
                   f"a plain task on {role} ran in {node['plain']['prefix']}")  # fmt: skip
            prefix = check_in_environment(pod, node["task"], image, activation)
            expect(check_in_environment(pod, node["actor"], image, activation) == prefix,
                   f"the actor on {role} used another environment than the task")
            for kind in ("task", "actor"):
                expect(PurePosixPath(node[kind]["module"]).is_relative_to(prefix),
                       f"pyjokes on {role} came from {node[kind]['module']}, not {prefix}")
            expect(is_environment(pod, prefix), f"{prefix} is no environment on {pod.name}")
            prefixes[role] = prefix
        expect(inline.result["driver"]["prefix"] == image["prefix"],
               "the inline job's driver left the image's Python")  # fmt: skip
        for role, pod in pods.items():
            done = installs(pod)
            expect(len(done) == 1 and all(done.values()),
                   f"{role}: expected one completed install, got {done}")  # fmt: skip
        took.mark(f"inline job: one install on each node ({inline.seconds:.0f} s)")

        # 3. The project environment: the working_dir is a pixi project.
        project_dir = work / "project"
        locked = write_project(project_dir, image, cluster)
        project_env = {"pixi": {"manifest": "pixi.toml", "include": PROJECT_INCLUDE,
                                "locked": locked}}  # fmt: skip
        project_entry = probe(PROJECT_PACKAGE, None, activation.variable)
        project = jobs.succeeded("project", project_entry, working_dir=project_dir,
                                 runtime_env=project_env)  # fmt: skip
        driver = check_in_environment(head, project.result["driver"], image, activation)
        local_module = (project_dir / "src" / PROJECT_PACKAGE / "__init__.py").read_text()
        for role, pod in pods.items():
            node = project.result["nodes"][role]
            # A plain task inherits the job's environment, as every task does.
            plain = check_in_environment(pod, node["plain"], image, activation)
            expect(plain != prefixes[role], f"the project job on {role} ran in the inline env")
            expect(is_environment(pod, plain), f"{plain} is no environment on {pod.name}")
            for kind in ("task", "actor"):
                prefix = check_in_environment(pod, node[kind], image, activation)
                expect(prefix == plain, f"the project job's {kind} on {role} left its env")
                # The package is editable: its source is the project's copy in the store.
                module = node[kind]["module"]
                expect(PurePosixPath(module).is_relative_to(pod.store),
                       f"{PROJECT_PACKAGE} on {role} came from {module}, not the store")
                expect(pod.run("cat", module) == local_module,
                       f"{module} on {role} is not the project's {PROJECT_PACKAGE}")
            if role == "head":
                expect(plain == driver, "the project job's driver ran in another environment")
        logs = {role: installs(pod) for role, pod in pods.items()}
        for role, found in logs.items():
            pids = {int(name.removesuffix(".log").rsplit("-", 1)[1]) for name in found}
            expect(len(found) == 2 and all(found.values()) and pids == set(agents[role]),
                   f"{role}: expected two installs by its agent {agents[role]}, got {found}")
        took.mark(f"project job: one more install on each node ({project.seconds:.0f} s)")

        # 4. Both again: the same environments, no install attempt at all.
        inline_again = jobs.succeeded("inline-again", inline_entry, working_dir=JOB_DIR)
        project_again = jobs.succeeded("project-again", project_entry, working_dir=project_dir,
                                       runtime_env=project_env)  # fmt: skip
        for role, pod in pods.items():
            expect(inline_again.result["nodes"][role]["task"]["prefix"] == prefixes[role],
                   f"the inline job again on {role} used another environment")
            expect(project_again.result["nodes"][role]["task"]["prefix"]
                   == project.result["nodes"][role]["task"]["prefix"],
                   f"the project job again on {role} used another environment")  # fmt: skip
            expect(installs(pod) == logs[role], f"{role} installed again: {installs(pod)}")
        took.mark(f"both jobs again, no install ({inline_again.seconds:.0f} s, "
                  f"{project_again.seconds:.0f} s)")  # fmt: skip

        # 5. The worker's Ray container restarts; its volume keeps the environment.
        old_worker_id = inline.result["nodes"]["worker"]["node_id"]
        before = worker.refresh().status()["restartCount"]
        # Ray stops in the worker's Ray container only (its own PID namespace); `ray start
        # --block` then exits and the kubelet restarts the container. The exec dies with the
        # container, often before it can report: its outcome says nothing.
        with contextlib.suppress(Exception):
            worker.exec("ray", "stop", "--force")
        poll(lambda: worker.refresh().status()["restartCount"] > before and worker.ready(),
             timeout=600, what="the kubelet to restart the worker's Ray container")
        jobs.wait_for_nodes([head, worker], not_ids=[old_worker_id])
        expect(process_ids(worker, AGENT), "the restarted worker runs no runtime_env agent")
        took.mark("the worker's Ray container restarted by the kubelet; its node rejoined")
        after = jobs.succeeded("inline-after-restart", inline_entry, working_dir=JOB_DIR)
        seen = after.result["nodes"]["worker"]
        expect(seen["node_id"] != old_worker_id, "the worker's Ray node did not restart")
        expect(check_in_environment(worker, seen["task"], image, activation)
               == prefixes["worker"], "after the restart the worker used another environment")
        expect(installs(worker) == logs["worker"],
               f"the restarted worker installed again: {installs(worker)}")  # fmt: skip
        took.mark(f"the inline job after the restart, no install ({after.seconds:.0f} s)")

        # Nothing of the payload is importable in any environment.
        visible = {}
        for job in (inline, project, after):
            for role, pod in pods.items():
                for kind in ("task", "actor"):
                    if there := payload_seen(pod, job.result["nodes"][role][kind]):
                        visible[f"{job.id} {role} {kind}"] = there
        expect(not visible, f"workers in pixi environments see the payload: {visible}")
        report.jobs.update(inline=inline, project=project, inline_again=inline_again,
                           project_again=project_again, after_restart=after)  # fmt: skip
        report.pods.update({role: pod.refresh().pod for role, pod in pods.items()})
    kube.delete_ray_cluster(namespace, name)
    took.mark("RayCluster deleted")


def _unsupported_ray(head: RayPod, manifest: Obj) -> list[str]:
    """Ray below the plugin's floor, `rayVersion` absent so admission cannot know."""
    expect("rayVersion" not in manifest["spec"], "the unsupported-Ray cluster names rayVersion")
    ray = head.python(_IMAGE)["ray"]
    return ["ray-pixi cannot run on this Ray node", f"Ray {ray} (needs >= ",
            "Jobs without runtime_env['pixi'] are not affected"]  # fmt: skip


def _read_only_store(head: RayPod, manifest: Obj) -> list[str]:
    """The Ray container mounts the add-on's volume read-only (a user's mount the add-on
    keeps): the payload imports, the store cannot be written."""
    code, _, err = head.exec("touch", f"{head.volume}/probe")
    expect(code != 0 and "Read-only file system" in err,
           f"the read-only store's volume is writable: {code} {err}")  # fmt: skip
    return [f"ray-pixi's environment store {head.store} cannot be used",
            "it is on a read-only filesystem",
            "jobs without runtime_env['pixi'] are not affected"]  # fmt: skip


def _failing_cluster(cluster: Cluster, kube: Kube, namespace: str, report: Report,
                     manifest_file: str, expected: Callable[[RayPod, Obj], list[str]]
                     ) -> None:  # fmt: skip
    """A head-only labelled cluster on which ray-pixi cannot work: the Ray node stays up,
    plain tasks run, pixi tasks and actors fail with the reason."""
    took = Timings(cluster.log)
    manifest = load(manifest_file, cluster)
    name = manifest["metadata"]["name"]
    (head,) = start(kube, namespace, manifest)
    check_prepared(head)
    texts = expected(head, manifest)
    with cluster.jobs_address(namespace, name) as address:
        jobs = Jobs(address)
        (node,) = jobs.wait_for_nodes([head])
        took.mark(f"{name}: its head Pod Ready")
        inline_env = {"pixi": {"pypi_dependencies": {"pyjokes": f"=={PYJOKES}"}}}
        job = jobs.succeeded("failure", probe(None, inline_env), working_dir=JOB_DIR)
        seen = job.result["nodes"]["head"]
        image = head.python(_IMAGE)
        expect(seen["plain"].get("prefix") == image["prefix"],
               f"{name}: the plain task did not run: {seen['plain']}")  # fmt: skip
        for kind in ("task", "actor"):
            error = seen[kind].get("error", "")
            missing = [text for text in texts if text not in error]
            expect(not missing, f"{name}: the pixi {kind} did not fail with {missing}: "
                                f"{seen[kind]}")  # fmt: skip
        # The same Ray node is still alive, its container running: nothing crashed.
        alive = [n["node_id"] for n in jobs.alive_nodes()]
        expect(alive == [node["node_id"]], f"{name}: alive Ray nodes {alive}, was {node}")
    status = head.refresh().status()
    expect("running" in status["state"] and status["ready"] and status["restartCount"] == 0,
           f"{name}: the Ray container restarted or stopped: {status}")  # fmt: skip
    report.pods[name] = head.pod
    report.jobs[name] = job
    took.mark(f"{name}: plain task ran, pixi task and actor failed with the reason "
              f"({job.seconds:.0f} s)")  # fmt: skip
    kube.delete_ray_cluster(namespace, name)


def _rayjob(cluster: Cluster, kube: Kube, namespace: str, report: Report) -> None:
    """A labelled RayJob: KubeRay copies the label onto its RayCluster, the webhook prepares
    it, and the entrypoint's task runs in an inline environment in the store."""
    took = Timings(cluster.log)
    rayjob: Obj = yaml.safe_load((E2E_DIR / "rayjob.yaml").read_text())
    expect(rayjob["metadata"]["labels"].get(ENABLED_LABEL) == ENABLED_VALUE,
           "e2e/rayjob.yaml is not labelled for the add-on")  # fmt: skip
    spec = with_images({"spec": rayjob["spec"]["rayClusterSpec"]}, cluster.images)
    rayjob["spec"]["rayClusterSpec"] = cluster.adapt(spec)["spec"]
    name = rayjob["metadata"]["name"]
    kube.create(namespace, rayjob)

    def status() -> Obj:
        return dict(kube.ray_object(namespace, "rayjobs", name).get("status") or {})

    cluster_name = str(poll(lambda: status().get("rayClusterName"), timeout=120,
                            what=f"RayJob {name}'s RayCluster", describe=lambda: str(status())))
    ray_cluster = kube.ray_object(namespace, "rayclusters", cluster_name)
    expect(ray_cluster["metadata"]["labels"].get(ENABLED_LABEL) == ENABLED_VALUE,
           f"KubeRay did not copy the label onto {cluster_name}")  # fmt: skip
    expect(INJECTION_ANNOTATION in (ray_cluster["metadata"].get("annotations") or {}),
           f"the webhook did not prepare {cluster_name}")  # fmt: skip
    head, worker = wait_for_ready_pods(kube, namespace, cluster_name, 2)
    for pod in (head, worker):
        check_prepared(pod)
    took.mark("RayJob's RayCluster (prepared by the webhook) Ready")
    final = poll(lambda: (s := status()).get("jobStatus") in ("SUCCEEDED", "FAILED", "STOPPED")
                 and s, timeout=JOB_TIMEOUT, what=f"RayJob {name} to finish",
                 describe=lambda: str(status()))  # fmt: skip
    expect(final["jobStatus"] == "SUCCEEDED", f"RayJob {name}: {final}")
    # The job's output from the head's Jobs API, not the submitter Pod's log: KubeRay marks
    # the RayJob SUCCEEDED from that API while the submitter may still be streaming the logs.
    with cluster.jobs_address(namespace, cluster_name) as address:
        jobs = Jobs(address)
        expect(jobs.status(final["jobId"]) == "SUCCEEDED", "the Jobs API disagrees")
        output = jobs.logs(final["jobId"])
    lines = [line for line in output.splitlines() if line.startswith("E2E-WORKER-SAW ")]
    expect(lines, f"RayJob {name} printed no E2E-WORKER-SAW line:\n{output[-4000:]}")
    _, version, prefix = lines[-1].split(" ", 2)
    expect(version == PYJOKES and PurePosixPath(prefix.strip()).is_relative_to(head.store),
           f"the RayJob's task did not run in a pixi env of the store: {lines[-1]}")
    report.pods["rayjob-head"] = head.pod
    took.mark(f"RayJob {final['jobStatus']}: {lines[-1]}")
