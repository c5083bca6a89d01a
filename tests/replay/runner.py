"""Run replayed Pods with the docker CLI, as a kubelet would, and tear down what was started.

The effects around `pod.py`'s pure plans: one Docker network per `Replay` (an internal
user-defined bridge: the daemon here runs with `--bridge=none --iptables=false`, but user
networks work), one sandbox container per Pod holding its network namespace (its IP is the
Pod IP), the Pod's host directories and files, then its init containers run to completion in
order (the first failure stops the Pod, with its logs) and its containers started detached.
Pods start concurrently, as a kubelet starts them, so a worker's `wait-gcs-ready` can wait
for a head started beside it.

The network stays on this host: the sandbox's default route is made on-link (no gateway), as
a CNI plugin sets up a Pod's namespace, so a packet for any address outside the replay's
subnet is never forwarded off the bridge; resolv.conf points at the Pod's own loopback, so no
name lookup leaves it either. The host reaches each Pod at its IP through the bridge.

Everything is named `<session>-...` and labelled with the session, so teardown removes exactly
what this `Replay` started, even after a failure halfway.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pod import (
    ContainerRun,
    HostDirectory,
    PodContext,
    PodPlan,
    ReplayError,
    build_pod_plan,
    build_sandbox,
    build_service_hosts,
)

__all__ = ["PodStartError", "Replay", "RunningPod"]

Obj = Mapping[str, Any]
Log = Callable[[str], None]
SESSION_LABEL = "io.ray-pixi.replay.session"
INIT_TIMEOUT = 600.0


class PodStartError(RuntimeError):
    """A Pod did not start: which container, its exit code and the tail of its logs."""


def _docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ReplayError(
            f"docker {' '.join(args[:3])} ... failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class RunningPod:
    """A started Pod: its object, IP, plan, and ways to look into its containers."""

    pod: Obj
    ip: str
    plan: PodPlan
    pod_dir: Path

    @property
    def name(self) -> str:
        return self.plan.name

    def docker_name(self, container: str) -> str:
        return self.plan.container(container).docker_name

    def host_path(self, volume: str) -> Path:
        """The host directory behind an emptyDir of this Pod."""
        return self.pod_dir / "volumes" / volume

    def exec(
        self, container: str, *argv: str, user: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`docker exec` in the container, with the env its Pod gave it (Docker keeps it)."""
        options = ["--user", user] if user else []
        return _docker(
            "exec", *options, self.docker_name(container), *argv, timeout=timeout, check=False
        )

    def logs(self, container: str) -> str:
        done = _docker("logs", self.docker_name(container), check=False)
        return done.stdout + done.stderr

    def inspect(self, container: str) -> dict[str, Any]:
        done = _docker("inspect", self.docker_name(container))
        return dict(json.loads(done.stdout)[0])

    def running(self, container: str) -> bool:
        return bool(self.inspect(container)["State"]["Running"])

    def restart(self, container: str) -> None:
        """Restart one container as the kubelet does: stop it (SIGTERM, then SIGKILL after the
        Pod's grace period), then start a new container from its image in the same sandbox
        with the same volume directories. Nothing written outside the volumes survives (a
        `docker restart` would keep the old container's filesystem)."""
        grace = str((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        name = self.docker_name(container)
        _docker("stop", "-t", grace, name, timeout=float(grace) + 60)
        _docker("rm", name)
        _docker(*self.plan.container(container).argv)


class Replay:
    """Pods run with Docker on one network of their own; use as a context manager."""

    def __init__(self, workdir: Path, *, sandbox_image: str, log: Log = print) -> None:
        self.session = f"replay-{secrets.token_hex(4)}"
        self.workdir = workdir
        self.sandbox_image = sandbox_image
        self.network = self.session
        self.host_ip = ""
        self.subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        self.log = log
        self.pods: list[RunningPod] = []
        self._network_created = False

    def __enter__(self) -> Replay:
        self.create_network()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    # --- the network --------------------------------------------------------------------------

    def create_network(self) -> None:
        # --internal: no NAT or published ports are wanted (and none could be set up here).
        _docker(
            "network", "create", "--driver", "bridge", "--internal",
            "--label", f"{SESSION_LABEL}={self.session}", self.network,
        )  # fmt: skip
        self._network_created = True
        (config,) = json.loads(_docker("network", "inspect", self.network).stdout)[0]["IPAM"][
            "Config"
        ]
        self.host_ip = config["Gateway"]  # the host's address on the bridge
        self.subnet = ipaddress.ip_network(config["Subnet"])
        self.log(f"replay: network {self.network} {self.subnet}, host at {self.host_ip}")

    def _start_sandbox(self, pod: Obj) -> tuple[str, str]:
        name = f"{self.session}-{pod['metadata']['name']}-sandbox"
        _docker(*build_sandbox(
            pod, name=name, network=self.network, image=self.sandbox_image,
            labels={SESSION_LABEL: self.session},
        ))  # fmt: skip
        state = json.loads(_docker("inspect", name).stdout)[0]
        ip = state["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        self._confine(name, int(state["State"]["Pid"]))
        return name, ip

    def _confine(self, sandbox: str, pid: int) -> None:
        """The Pod's default route on-link, without the bridge's gateway: nothing is routed off
        the bridge (what a CNI plugin configures in a Pod's namespace)."""
        argv = ["nsenter", f"--target={pid}", "--net", "ip", "route", "replace", "default", "dev",
                "eth0"]  # fmt: skip
        if shutil.which("nsenter") is None or shutil.which("ip") is None:
            raise ReplayError("the replay confines Pod networks with nsenter and ip (util-linux, "
                              "iproute2): install them")  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise ReplayError(
                f"cannot set the route of sandbox {sandbox} ({' '.join(argv)}): "
                f"{done.stderr.strip()}; the replay needs root on the host for that"
            )

    # --- Pods ---------------------------------------------------------------------------------

    def _image_users(self, pods: Sequence[Obj]) -> dict[str, str]:
        users: dict[str, str] = {}
        for pod in pods:
            spec = pod.get("spec") or {}
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                image = container["image"]
                if image in users:
                    continue
                found = _docker("image", "inspect", "--format", "{{.Config.User}}", image,
                                check=False)  # fmt: skip
                if found.returncode != 0:
                    raise ReplayError(
                        f"Pod {pod['metadata']['name']} container {container['name']}: image "
                        f"{image} is not on this Docker host (nothing is pulled): build it first"
                    )
                users[image] = found.stdout.strip()
        return users

    def start(
        self,
        pods: Sequence[Obj],
        *,
        services: Sequence[Obj] = (),
        config_maps: Sequence[Obj] = (),
        secrets: Sequence[Obj] = (),
        tokens: Mapping[str, str] | None = None,
        claims: Mapping[str, Path] | None = None,
        init_timeout: float = INIT_TIMEOUT,
    ) -> list[RunningPod]:
        """Start `pods` (concurrently); returns them once each one's containers are started.

        `tokens`: ServiceAccount name -> token for projected serviceAccountToken volumes.
        """
        users = self._image_users(pods)
        sandboxes = [self._start_sandbox(pod) for pod in pods]
        ips = [ip for _, ip in sandboxes]
        hosts = build_service_hosts(services, list(zip(pods, ips, strict=True)))
        contexts = []
        for pod, (sandbox, ip) in zip(pods, sandboxes, strict=True):
            namespace = pod["metadata"]["namespace"]
            account = (pod.get("spec") or {}).get("serviceAccountName", "default")
            contexts.append(PodContext(
                pod_ip=ip,
                host_ip=self.host_ip,
                sandbox=sandbox,
                name_prefix=self.session,
                pod_dir=self.workdir / namespace / pod["metadata"]["name"],
                node_dir=self.workdir / "node",
                node_cpu=str(os.cpu_count() or 1),
                claims=dict(claims or {}),
                config_maps=_by_name(config_maps, namespace),
                secrets=_by_name(secrets, namespace),
                service_account_token=(tokens or {}).get(account),
                image_users=users,
                cluster_hosts=hosts,
                labels={SESSION_LABEL: self.session},
            ))  # fmt: skip
        plans = [build_pod_plan(pod, context) for pod, context in zip(pods, contexts, strict=True)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(pods))) as pool:
            futures = [
                pool.submit(self._run_pod, plan, context, init_timeout)
                for plan, context in zip(plans, contexts, strict=True)
            ]
            for future in futures:
                future.result()
        started = [
            RunningPod(pod, context.pod_ip, plan, context.pod_dir)
            for pod, context, plan in zip(pods, contexts, plans, strict=True)
        ]
        self.pods += started
        return started

    def _run_pod(self, plan: PodPlan, context: PodContext, init_timeout: float) -> None:
        for directory in plan.directories:
            _make_directory(directory)
        for file in plan.files:
            file.path.parent.mkdir(parents=True, exist_ok=True)
            file.path.write_bytes(file.content)
            file.path.chmod(file.mode)
        for run in plan.init_containers:
            if run.sidecar:
                _docker(*run.argv)
                continue
            self._run_to_completion(plan, run, init_timeout)
        for run in plan.containers:
            _docker(*run.argv)
        self.log(f"replay: Pod {plan.namespace}/{plan.name} started at {context.pod_ip}")

    def _run_to_completion(self, plan: PodPlan, run: ContainerRun, timeout: float) -> None:
        started = time.monotonic()
        try:
            subprocess.run(
                ["docker", *run.argv], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            _docker("kill", run.docker_name, check=False)
            logs = _docker("logs", run.docker_name, check=False)
            raise PodStartError(
                f"Pod {plan.namespace}/{plan.name}: init container {run.name} did not finish "
                f"within {timeout:.0f} s; its log:\n{_tail(logs.stdout + logs.stderr)}"
            ) from None
        state = _docker("inspect", "--format", "{{.State.ExitCode}}", run.docker_name, check=False)
        if state.returncode != 0:
            raise PodStartError(
                f"Pod {plan.namespace}/{plan.name}: docker could not create init container "
                f"{run.name}: {state.stderr.strip()}"
            )
        code = int(state.stdout.strip())
        logs = _docker("logs", run.docker_name, check=False)
        if code != 0:
            raise PodStartError(
                f"Pod {plan.namespace}/{plan.name}: init container {run.name} exited with {code}; "
                f"its log:\n{_tail(logs.stdout + logs.stderr)}"
            )
        self.log(
            f"replay: {plan.namespace}/{plan.name} init container {run.name} done in "
            f"{time.monotonic() - started:.1f} s"
        )

    # --- teardown -----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove every container and the network of this session (killed, not stopped)."""
        listed = _docker(
            "ps", "-aq", "--filter", f"label={SESSION_LABEL}={self.session}", check=False
        )
        ids = listed.stdout.split()
        if ids:
            _docker("rm", "-f", "-v", *ids, check=False, timeout=300)
        if self._network_created:
            _docker("network", "rm", self.network, check=False)
            self._network_created = False


def _by_name(objects: Sequence[Obj], namespace: str) -> dict[str, Obj]:
    return {
        o["metadata"]["name"]: o
        for o in objects
        if o["metadata"].get("namespace", namespace) == namespace
    }


def _make_directory(directory: HostDirectory) -> None:
    path = directory.path
    if directory.must_exist:
        if not path.is_dir():
            raise ReplayError(f"hostPath {path} (type Directory) does not exist")
        return
    path.mkdir(parents=True, exist_ok=True)
    mode = directory.mode
    if directory.gid is not None:
        os.chown(path, -1, directory.gid)
        mode |= 0o2070
    path.chmod(mode)
