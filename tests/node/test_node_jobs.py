"""Jobs with `runtime_env={"pixi": ...}` on the Pods KubeRay builds, run by a real kubelet.

The chart, installed on the node with the add-on's image, prepares a labelled RayCluster
(`e2e/raycluster.yaml`: head and one worker); KubeRay builds its Pods, the kubelet runs them
until KubeRay's own probes pass, on a bridge whose only way out is the site
(tests/node/site.py): the local channel as conda-forge and the mapping service on the node's
address, PyPI through a recording proxy, and the node pixi configuration as a ConfigMap. Jobs
go in through the head's Jobs API behind its Service, with `ray job submit` from this
process. Real pixi runs inside the Ray containers as an air-gapped node runs it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import ray
from ray_pixi_operator import names

import ray_pixi
from kube.cluster import KubeCluster
from kube.release import Release
from kube.rest import poll
from node.images import PYTHON_PREFIX_IN_IMAGE, real_pixi
from node.raycluster import (
    JOBS_DIR,
    Job,
    NodePod,
    Obj,
    Timings,
    completed_installs,
    container_env,
    dashboard_address,
    e2e_cluster,
    host_path_of,
    install_logs,
    process_ids,
    ray_container,
    start_cluster,
    store_dir,
    submit_job,
    wait_for_nodes,
)
from node.site import Site
from ray_pixi import pixi
from realpixi.channel import Channel
from realpixi.recipes import ActivationRecipe
from realpixi.run import run_pixi
from realpixi.servers import PYPI_HOSTS

pytestmark = [pytest.mark.node]

PROBE = "probe_job.py"
ACTIVATION = ActivationRecipe()
# Inline: from the local channel (python, pinned by the plugin to the cluster's, and the
# activation package) plus a PyPI package the Ray image lacks.
INLINE = {
    "dependencies": {ACTIVATION.name: "*"},
    "pypi_dependencies": {"pyjokes": "==0.8.3"},
}
RAY_UID = 1000  # the Ray image's user, as in Ray's own images
AGENT = "ray::RuntimeEnvAgent"  # the title Ray gives its runtime_env agent process


def _probe(module: str | None, runtime_env: Mapping[str, Any] | None) -> list[str]:
    return ["python", PROBE, json.dumps({"module": module, "runtime_env": runtime_env})]


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    conda_channel: Channel,
    pixi_node_env: Mapping[str, str],
) -> Path:
    """A pixi project a user submits as the working_dir: a manifest on conda-forge with the
    cluster's Python, the activation package, Ray and an editable local package `mypkg`,
    locked with the session's real pixi on this machine; and the job's script."""
    root = tmp_path_factory.mktemp("replay-jobs") / "project"
    (root / "mypkg" / "src" / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "pyproject.toml").write_text(
        '[project]\nname = "mypkg"\nversion = "0.1"\n'
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
    )
    (root / "mypkg" / "src" / "mypkg" / "__init__.py").write_text("VALUE = 'replayed'\n")
    (root / "pixi.toml").write_text(
        '[workspace]\nname = "replayed"\nchannels = ["conda-forge"]\nplatforms = ["linux-64"]\n'
        f'\n[dependencies]\npython = "=={conda_channel.version("python")}"\n'
        f'{ACTIVATION.name} = "*"\n'
        "\n[pypi-dependencies]\n"
        f'ray = {{ version = "=={ray.__version__}", extras = ["default"] }}\n'
        'mypkg = { path = "mypkg", editable = true }\n'
    )
    locked = run_pixi(["lock", "--manifest-path", str(root / "pixi.toml")], pixi_node_env)
    assert locked.returncode == 0, locked.stderr
    shutil.copy(JOBS_DIR / PROBE, root / PROBE)
    return root


def _in_environment(pod: NodePod, seen: Mapping[str, Any], python: str) -> PurePosixPath:
    """What a worker in a pixi environment on `pod` saw; returns its sys.prefix.

    It ran on that Pod, with the environment's Python (the image's exact version), under the
    store on the Pod's ray-pixi volume (a real directory there on this host), and with the
    activation package's activate.d variable set.
    """
    assert "error" not in seen, seen.get("error")
    assert seen["ip"] == pod.ip
    store = PurePosixPath(container_env(pod)["RAY_PIXI_STORE_DIR"])
    prefix = PurePosixPath(seen["prefix"])
    assert prefix.is_relative_to(store), (prefix, store)
    assert PurePosixPath(seen["executable"]).is_relative_to(prefix)
    on_host = host_path_of(pod, str(prefix))
    assert on_host.is_relative_to(pod.host_path(names.VOLUME_NAME))
    assert (on_host / "conda-meta").is_dir(), f"{on_host} is not the environment's prefix"
    assert seen["python"] == python
    assert seen["activated"] == ACTIVATION.activated_value
    return prefix


def _payload_seen(pod: NodePod, seen: Mapping[str, Any]) -> list[str]:
    """What of the add-on's payload a worker could import: ray_pixi itself, sys.path entries
    on the ray-pixi volume outside the store, the Pod's declared PYTHONPATH entries."""
    store = PurePosixPath(container_env(pod)["RAY_PIXI_STORE_DIR"])
    declared = {e for e in container_env(pod).get("PYTHONPATH", "").split(":") if e}
    found = [f"ray_pixi from {seen['ray_pixi']}"] if seen["ray_pixi"] else []
    for entry in seen["path"]:
        where = PurePosixPath(entry or ".")
        on_volume = where.is_relative_to(names.MOUNT_PATH) and not where.is_relative_to(store)
        if on_volume or entry in declared:
            found.append(f"sys.path entry {entry}")
    return found


def _agent_used_the_payload(pod: NodePod) -> list[int]:
    """The Pod's runtime_env agent imports ray_pixi from the add-on's volume (`ray-pixi
    doctor` reads the running agent's own environment); returns the agent's PIDs."""
    agents = process_ids(pod, AGENT)
    assert len(agents) == 1, agents
    doctor = pod.exec(ray_container(pod), "python", "-m", "ray_pixi.cli", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "Checking the runtime_env agent of the running Ray node" in doctor.stdout
    found = re.search(rf"imports ray_pixi {re.escape(ray_pixi.__version__)} from (\S+)",
                      doctor.stdout)  # fmt: skip
    assert found, doctor.stdout
    assert PurePosixPath(found[1]).is_relative_to(names.MOUNT_PATH), found[1]
    bare = pod.exec(ray_container(pod), "env", "-u", "PYTHONPATH", "-u", "PYTHONUSERBASE",
                    "python", "-c", "import ray_pixi")  # fmt: skip
    assert bare.returncode != 0 and "No module named 'ray_pixi'" in bare.stderr
    return agents


def _install_pids(logs: list[Path]) -> set[int]:
    return {int(log.stem.rsplit("-", 1)[1]) for log in logs}  # install-<key>-<time>-<pid>


def _submit(address: str, name: str, **options: Any) -> Job:
    job = submit_job(address, submission_id=f"{name}-{secrets.token_hex(3)}", **options)
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    return job


@dataclass
class Scenario:
    """The cluster and what each step of the scenario observed, in order."""

    site: Site
    cluster: Obj  # the RayCluster once its Pods were Ready
    address: str  # the dashboard, behind the head's Service
    head: NodePod
    worker: NodePod
    image_python: str
    inline: Job
    project: Job
    agents: dict[str, list[int]]  # role -> runtime_env agent PIDs after the first jobs
    logs: dict[str, list[Path]]  # role -> install logs after the first jobs
    inline_again: Job
    project_again: Job
    logs_again: dict[str, list[Path]]
    old_worker_id: str
    worker_restarts: int  # the Ray container's restartCount after the kubelet restarted it
    restarted_agents: list[int]
    after_restart: Job
    logs_after_restart: dict[str, list[Path]]

    @property
    def pods(self) -> dict[str, NodePod]:
        return {"head": self.head, "worker": self.worker}


def _install_logs(scenario_pods: Mapping[str, NodePod]) -> dict[str, list[Path]]:
    return {role: install_logs(pod) for role, pod in scenario_pods.items()}


@pytest.fixture(scope="module")
def scenario(
    kube_node: KubeCluster,
    release: Release,
    e2e_images: dict[str, str],
    site: Site,
    project: Path,
) -> Iterator[Scenario]:
    """e2e/raycluster.yaml (head + one worker) on the node, and the scenario run on it once:
    the inline and the project job, both again, then the worker's Ray container restarted by
    the kubelet and the inline job once more. The tests below assert on it."""
    namespace = kube_node.create_namespace(f"node-jobs-{secrets.token_hex(3)}")
    try:
        yield _run_scenario(kube_node, namespace, e2e_images, site, project)
    finally:
        kube_node.delete_namespace(namespace)


def _run_scenario(cluster: KubeCluster, namespace: str, e2e_images: Mapping[str, str],
                  site: Site, project: Path) -> Scenario:
    took = Timings()
    manifest = site.apply_to(e2e_cluster("raycluster.yaml", e2e_images))
    name = manifest["metadata"]["name"]
    head, worker = start_cluster(cluster, namespace, manifest,
                                 config_maps=site.config_maps(namespace))  # fmt: skip
    pods = {"head": head, "worker": worker}
    address = dashboard_address(cluster, namespace, name)
    wait_for_nodes(address, [head, worker])
    took.mark("RayCluster created, its Pods Ready by KubeRay's probes, both Ray nodes alive")
    ray_cluster = dict(cluster.rest().get(
        cluster.path_for("ray.io/v1", "RayCluster", namespace, name)))  # fmt: skip
    image_python = head.exec(ray_container(head), "python", "-c",
                             "import platform; print(platform.python_version())").stdout.strip()

    inline_entry = _probe("pyjokes", {"pixi": INLINE})
    inline = _submit(address, "inline", entrypoint=inline_entry, working_dir=JOBS_DIR)
    took.mark(f"inline job: an install on each node ({inline.seconds:.0f} s from submission)")
    runtime_env = {"working_dir": str(project),
                   "pixi": pixi("pixi.toml", include=["mypkg/**"], working_dir=project)}
    project_entry = _probe("mypkg", None)
    project_job = _submit(address, "project", entrypoint=project_entry, runtime_env=runtime_env)
    took.mark(f"project job: an install on each node ({project_job.seconds:.0f} s)")
    agents = {role: _agent_used_the_payload(pod) for role, pod in pods.items()}
    logs = _install_logs(pods)
    for role, pod in pods.items():
        for log in completed_installs(pod):
            print(f"node: {role}: {log.read_text().splitlines()[-1]}", flush=True)

    inline_again = _submit(address, "inline-again", entrypoint=inline_entry, working_dir=JOBS_DIR)
    project_again = _submit(address, "project-again", entrypoint=project_entry,
                            runtime_env=runtime_env)  # fmt: skip
    took.mark(f"both jobs again ({inline_again.seconds:.0f} s, {project_again.seconds:.0f} s)")
    logs_again = _install_logs(pods)

    old_worker_id = inline.result["nodes"]["worker"]["node_id"]
    before = worker.refresh().container_status(ray_container(worker))["restartCount"]
    # Ray stops inside the worker's Ray container only (its own PID namespace); `ray start
    # --block` then exits, and the kubelet restarts the container by the Pod's policy. The
    # exec dies with the container (often before it can report), so its status says nothing.
    worker.exec(ray_container(worker), "ray", "stop", "--force")

    def restarted() -> bool:
        status = worker.refresh().container_status(ray_container(worker))
        return status["restartCount"] > before and worker.ready()

    poll(restarted, timeout=240, what="the kubelet to restart the worker's Ray container",
         interval=1)  # fmt: skip
    worker_restarts = worker.container_status(ray_container(worker))["restartCount"]
    wait_for_nodes(address, [head, worker], not_ids=[old_worker_id])
    took.mark("the worker's Ray container restarted by the kubelet and its node rejoined")
    restarted_agents = process_ids(worker, AGENT)
    after_restart = _submit(address, "inline-after-restart", entrypoint=inline_entry,
                            working_dir=JOBS_DIR)  # fmt: skip
    took.mark(f"the inline job after the restart ({after_restart.seconds:.0f} s)")
    return Scenario(
        site=site, cluster=ray_cluster, address=address, head=head, worker=worker,
        image_python=image_python, inline=inline, project=project_job, agents=agents,
        logs=logs, inline_again=inline_again,
        project_again=project_again, logs_again=logs_again, old_worker_id=old_worker_id,
        worker_restarts=worker_restarts, restarted_agents=restarted_agents,
        after_restart=after_restart,
        logs_after_restart=_install_logs(pods),
    )  # fmt: skip


def test_the_labelled_raycluster_becomes_ready_by_kuberays_own_probes(scenario: Scenario) -> None:
    """KubeRay's probes (for rayVersion >= 2.53 one HTTP check on the dashboard agent's
    /api/healthz; the wget probes of older Rays are test_node_failures') passed in each Ray
    container the webhook prepared, and KubeRay calls the cluster ready."""
    assert scenario.cluster["status"]["state"] == "ready", scenario.cluster["status"]
    for pod in scenario.pods.values():
        (ray_spec,) = [c for c in pod.pod["spec"]["containers"]
                       if c["name"] == ray_container(pod)]  # fmt: skip
        for probe in ("readinessProbe", "livenessProbe"):
            assert ray_spec[probe]["httpGet"]["path"] == "/api/healthz", ray_spec[probe]
        assert pod.container_status(ray_container(pod))["ready"] is True
        assert "RAY_PIXI_STORE_DIR" in container_env(pod)  # the webhook prepared it


def test_the_pods_run_as_the_webhook_and_kuberay_prepared_them(scenario: Scenario) -> None:
    """The payload init container ran to completion non-root, read-only, with no
    capabilities (what the webhook asked, the kubelet enforced) and put the real pixi on the
    volume; the Ray user imports ray_pixi from the volume only; `ray status` names each node
    by its group (a fieldRef the kubelet resolved)."""
    _, pixi_sha = real_pixi()
    for pod in scenario.pods.values():
        status = pod.container_status(names.INIT_CONTAINER_NAME, init=True)
        assert status["state"]["terminated"]["exitCode"] == 0, status
        (init,) = [c for c in pod.pod["spec"]["initContainers"]
                   if c["name"] == names.INIT_CONTAINER_NAME]  # fmt: skip
        context = init["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["allowPrivilegeEscalation"] is False
        # RAY_PIXI_EXE is the payload's launcher (bin/pixi), which runs <arch>/pixi.
        launcher = host_path_of(pod, container_env(pod)["RAY_PIXI_EXE"])
        pixi_file = launcher.parent.parent / platform.machine() / "pixi"
        assert hashlib.sha256(pixi_file.read_bytes()).hexdigest() == pixi_sha
        assert pixi_file.stat().st_uid != 0  # written by the non-root installer
        where = pod.exec(ray_container(pod), "python", "-c",
                         "import os, ray_pixi; print(os.getuid(), ray_pixi.__file__)")  # fmt: skip
        assert where.returncode == 0, where.stderr
        uid, module = where.stdout.split()
        assert uid == str(RAY_UID) and PurePosixPath(module).is_relative_to(names.MOUNT_PATH)
    status = scenario.head.exec(ray_container(scenario.head), "ray", "status")
    assert status.returncode == 0, status.stderr
    for pod in scenario.pods.values():
        group = pod.pod["metadata"]["labels"]["ray.io/group"]
        assert f" 1 {group}\n" in status.stdout, status.stdout


def test_the_channels_python_is_the_ray_images(scenario: Scenario, conda_channel: Channel) -> None:
    """Ray compares Python to the patch level: the local channel's python, which every pixi
    environment here gets, is the Ray image's interpreter."""
    assert scenario.image_python == conda_channel.version("python")


def test_inline_tasks_and_actors_run_in_an_environment_on_each_nodes_volume(
    scenario: Scenario,
) -> None:
    for role, pod in scenario.pods.items():
        node = scenario.inline.result["nodes"][role]
        assert node["plain"]["ip"] == pod.ip  # placed on that Pod's Ray node
        assert node["plain"]["prefix"] == PYTHON_PREFIX_IN_IMAGE  # a plain task: the image's
        prefix = _in_environment(pod, node["task"], scenario.image_python)
        assert _in_environment(pod, node["actor"], scenario.image_python) == prefix
        # pyjokes (from PyPI through the site's proxy) is the environment's.
        assert PurePosixPath(node["task"]["module"]).is_relative_to(prefix)
        assert PurePosixPath(node["actor"]["module"]).is_relative_to(prefix)
    # Each node has its own environment, on its own volume.
    hosts = {host_path_of(pod, scenario.inline.result["nodes"][role]["task"]["prefix"])
             for role, pod in scenario.pods.items()}  # fmt: skip
    assert len(hosts) == 2
    assert scenario.inline.result["driver"]["prefix"] == PYTHON_PREFIX_IN_IMAGE


def test_a_project_jobs_driver_tasks_and_actors_run_in_the_project_environment(
    scenario: Scenario,
) -> None:
    python = scenario.image_python
    driver = _in_environment(scenario.head, scenario.project.result["driver"], python)
    for role, pod in scenario.pods.items():
        node = scenario.project.result["nodes"][role]
        inline_prefix = scenario.inline.result["nodes"][role]["task"]["prefix"]
        # A plain task inherits the job's environment, as every task does.
        assert str(_in_environment(pod, node["plain"], python)) != inline_prefix
        for kind in ("task", "actor"):
            seen = node[kind]
            prefix = _in_environment(pod, seen, python)
            assert str(prefix) != inline_prefix  # another environment than the inline one
            # mypkg is editable: its source is the project's copy in the node's store.
            module = seen["module"]
            assert PurePosixPath(module).is_relative_to(container_env(pod)["RAY_PIXI_STORE_DIR"])
            assert host_path_of(pod, module).read_text() == "VALUE = 'replayed'\n"
            if role == "head":
                assert prefix == driver


def test_each_node_installed_each_environment_once_in_its_agent_from_the_payload(
    scenario: Scenario,
) -> None:
    """Two environments, two nodes: each node's runtime_env agent (which imported ray_pixi
    from the add-on's volume) installed each environment once, on its own volume."""
    for role, pod in scenario.pods.items():
        logs = scenario.logs[role]
        assert len(logs) == 2, [p.name for p in logs]
        assert set(logs) <= set(completed_installs(pod))  # both completed, neither failed
        assert _install_pids(logs) == set(scenario.agents[role])
        assert {p.parent for p in logs} == {store_dir(pod) / "logs"}
        assert store_dir(pod).is_relative_to(pod.host_path(names.VOLUME_NAME))


def test_submitting_again_reuses_both_environments_on_both_nodes(scenario: Scenario) -> None:
    for role in scenario.pods:
        first = scenario.inline.result["nodes"][role]["task"]
        assert scenario.inline_again.result["nodes"][role]["task"]["prefix"] == first["prefix"]
        assert (scenario.project_again.result["nodes"][role]["task"]["module"]
                == scenario.project.result["nodes"][role]["task"]["module"])  # fmt: skip
    assert scenario.logs_again == scenario.logs  # no install attempt at all


def test_a_restarted_worker_container_reuses_the_environment_on_its_volume(
    scenario: Scenario,
) -> None:
    worker = scenario.worker
    seen = scenario.after_restart.result["nodes"]["worker"]
    assert seen["node_id"] != scenario.old_worker_id  # a new Ray node, a new agent
    assert scenario.worker_restarts >= 1  # the kubelet restarted the container in its Pod
    # (PIDs cannot tell: the new container has a new PID namespace, and its processes start
    # in the same order, so the new agent often gets the old one's PID.)
    assert scenario.restarted_agents
    before = scenario.inline.result["nodes"]["worker"]["task"]["prefix"]
    assert str(_in_environment(worker, seen["task"], scenario.image_python)) == before
    assert scenario.logs_after_restart == scenario.logs  # the new agent installed nothing


class PayloadVisible(AssertionError):
    """A worker inside a pixi environment could import the add-on's payload."""


def test_workers_in_environments_cannot_import_the_payload(scenario: Scenario) -> None:
    seen = {}
    for job in (scenario.inline, scenario.project, scenario.after_restart):
        for role, pod in scenario.pods.items():
            node = job.result["nodes"][role]
            for kind in ("task", "actor"):
                if found := _payload_seen(pod, node[kind]):
                    seen[f"{job.id} {role} {kind}"] = found
    if seen:
        raise PayloadVisible(f"workers in pixi environments see the payload: {seen}")


def test_pixi_in_the_pods_reached_the_site_only(scenario: Scenario) -> None:
    """The mirror answered pixi in both Pods, the proxy tunnelled to PyPI for both, and no
    other host was asked for (the scenario's teardown checks that again at the very end)."""
    ips = {scenario.head.ip, scenario.worker.ip}
    assert {r.client for r in scenario.site.mirror.requests} == ips
    attempts = scenario.site.proxy.attempts
    assert {a.client for a in attempts} == ips
    assert {a.target for a in attempts} <= {f"{host}:443" for host in PYPI_HOSTS}
    assert not scenario.site.proxy.refused, scenario.site.proxy.refused
