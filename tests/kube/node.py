"""A real Kubernetes node on this machine: containerd, the kubelet, kube-proxy and CoreDNS as
host processes, the way Kubernetes' own `hack/local-up-cluster.sh` runs them.

The node is global to the machine: its bridge, its nft tables, its `kubepods` cgroups, the
kernel settings the kubelet rewrites. So one lock (`/run/ray-pixi-node/lock`) lets a single
node run at a time, and `teardown()` removes everything a node made, also what a killed run
left behind.

What runs, and why so:
- containerd (Debian's) as an instance of its own (config, socket, root, state): docker's
  containerd is not touched. Its root, which holds the imported images, is kept in the user
  cache so images are imported once per machine; everything else is per run.
- CNI: Debian's bridge, host-local and loopback plugins on a bridge and Pod subnet of the
  node's own; no masquerading, so a Pod reaches this machine (where the tests' servers
  listen on the node's address) and nothing beyond it.
- kube-proxy in nftables mode: its own `kube-proxy` tables; iptables is untouched.
- CoreDNS as a host process on the node's address, port 53: the Pods' `clusterDNS`.
- The pause image: a static Go binary (`go/pause`) in a one-file image.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from .build import cache_dir
from .pki import KeyPair
from .process import Service, free_port, wait_http_ok
from .rest import poll

__all__ = [
    "KERNEL_SETTINGS",
    "NODE_NAME",
    "POD_SUBNET",
    "NodeBinaries",
    "Node",
    "NodeLock",
    "node_ip",
    "remove_containers",
    "teardown",
]

NODE_NAME = "ray-pixi-node"
POD_SUBNET = "10.244.0.0/24"
BRIDGE = "rpnode0"
CLUSTER_DOMAIN = "cluster.local"
RUN_DIR = Path("/run/ray-pixi-node")
# The kernel settings the kubelet rewrites at start, with no way to turn that off
# (`protectKernelDefaults` only makes it refuse to start): saved before, restored after.
KERNEL_SETTINGS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))

Log = Callable[[str], None]


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    kube_scheduler: Path
    kube_controller_manager: Path
    coredns: Path
    pause: Path
    containerd: Path
    ctr: Path
    cni_bin_dir: Path

    @classmethod
    def find(cls, built: dict[str, Path]) -> NodeBinaries:
        """The built Go binaries plus containerd, ctr and the CNI plugins from the system."""
        missing = []
        system = {}
        for name in ("containerd", "ctr", "runc"):
            found = shutil.which(name)
            if found is None:
                missing.append(name)
            system[name] = Path(found or name)
        cni = next((d for d in CNI_BIN_DIRS if (d / "bridge").is_file()), None)
        if cni is None:
            missing.append("the CNI plugins (Debian: containernetworking-plugins)")
        if missing:
            raise FileNotFoundError(
                f"the node needs {', '.join(missing)}: run .ci/setup-kube, which installs them"
            )
        return cls(
            kubelet=built["kubelet"],
            kube_proxy=built["kube-proxy"],
            kube_scheduler=built["kube-scheduler"],
            kube_controller_manager=built["kube-controller-manager"],
            coredns=built["coredns"],
            pause=built["pause"],
            containerd=system["containerd"],
            ctr=system["ctr"],
            cni_bin_dir=cni or CNI_BIN_DIRS[0],
        )


def node_ip() -> str:
    """The machine's address on its default route: what the kubelet registers and the Pods
    reach this machine at (a UDP "connect" sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # TEST-NET-3: off-link, so via the default route
        return str(probe.getsockname()[0])


def containerd_root() -> Path:
    """containerd's root: kept across runs, so imported images are imported once."""
    return cache_dir() / "node" / "containerd"


def containerd_socket() -> Path:
    return RUN_DIR / "containerd" / "containerd.sock"


class NodeLock:
    """The machine-wide lock of the one node that may run at a time; released on close."""

    def __init__(self, log: Log, timeout: float = 1800) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(RUN_DIR / "lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            log(f"kube: another node runs on this machine ({self._file.read().strip()}); "
                f"waiting up to {timeout:.0f} s for it to stop")  # fmt: skip
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        self.close()
                        raise TimeoutError("another node kept running on this machine") from None
                    time.sleep(1)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


# kernel settings ----------------------------------------------------------------------------

def _saved_settings_file() -> Path:
    return RUN_DIR / "kernel-settings.json"


def save_kernel_settings() -> dict[str, str]:
    """Record the kernel settings before the kubelet starts, unless an earlier run that never
    restored them already did (then its record holds the machine's own values)."""
    saved = _saved_settings_file()
    if saved.exists():
        return dict(json.loads(saved.read_text()))
    values = {key: (Path("/proc/sys") / key).read_text().strip() for key in KERNEL_SETTINGS}
    saved.write_text(json.dumps(values))
    return values


def restore_kernel_settings(log: Log) -> None:
    saved = _saved_settings_file()
    if not saved.exists():
        return
    values = json.loads(saved.read_text())
    for key, value in values.items():
        current = (Path("/proc/sys") / key).read_text().strip()
        if current != value:
            (Path("/proc/sys") / key).write_text(value)
            log(f"kube: restored {key.replace('/', '.')} {current} -> {value}")
    saved.unlink()


# configuration (pure) -----------------------------------------------------------------------

def containerd_config(root: Path, state: Path, sock: Path, cni_bin: Path, cni_conf: Path,
                      sandbox_image: str) -> str:  # fmt: skip
    """containerd 1.6's config for the node's own instance (CRI on, cgroupfs)."""
    return f"""\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # The VM lacks CAP_SYS_RESOURCE: containerd may not lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def cni_conflist(ipam_dir: Path) -> dict[str, Any]:
    """A bridge of the node's own; Pods route everything via the host, which NATs nothing."""
    return {
        "cniVersion": "1.0.0",
        "name": "ray-pixi-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(*, ip: str, port: int, healthz_port: int, ca_file: Path, cert: Path,
                   key: Path, runtime_socket: Path) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This VM mounts cgroup v1 hierarchies; 1.36 refuses v1 unless told.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "oomScoreAdj": 0,
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "address": ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        # The machine's disk is shared with everything else: evict only when it is nearly
        # full, and never collect the imported images (no registry to pull them again).
        "evictionHard": {
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "memory.available": "100Mi",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        # Status changes reach the API server quickly; the tests wait on them.
        "nodeStatusUpdateFrequency": "4s",
        # Volume usage (an emptyDir's sizeLimit is enforced on it) measured every 10 s, not 1 min.
        "volumeStatsAggPeriod": "10s",
        "syncFrequency": "10s",
    }


def kube_proxy_config(*, kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Pod -> Service -> the same Pod, and host -> Service, both answered via the host.
        "masqueradeAll": True,
        # The VM's conntrack sysctls are not writable: leave them as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(*, ip: str, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    return f"""\
.:53 {{
    bind {ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
}}
"""


def dump_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# images -------------------------------------------------------------------------------------

def ctr(binaries: NodeBinaries, *args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:  # noqa: E501
    return subprocess.run(
        [str(binaries.ctr), "-n", "k8s.io", "-a", str(containerd_socket()), *args],
        capture_output=True, text=True, timeout=timeout, check=False, **kw,
    )  # fmt: skip


def containerd_ref(tag: str) -> str:
    """The name a Docker tag gets in containerd (and in the kubelet's view of it)."""
    name = tag
    first = name.split("/", 1)[0]
    if "/" not in name or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    return name


DOCKER_ID_LABEL = "io.ray-pixi.docker-image-id"


def import_image(binaries: NodeBinaries, tag: str, log: Log) -> bool:
    """Put Docker image `tag` into the node's containerd, unless the same image (by Docker's
    image ID, kept as a label) is there already. True when it imported."""
    docker_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    ref = containerd_ref(tag)
    listed = ctr(binaries, "images", "ls", f"name=={ref}")
    if f"{DOCKER_ID_LABEL}={docker_id}" in listed.stdout:
        return False
    started = time.monotonic()
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    assert save.stdout is not None
    imported = ctr(binaries, "images", "import", "--no-unpack=false", "-", stdin=save.stdout,
                   timeout=900)  # fmt: skip
    save.stdout.close()
    if save.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"importing {tag} into the node failed: {imported.stderr.strip()}")
    ctr(binaries, "images", "label", ref, f"{DOCKER_ID_LABEL}={docker_id}")
    log(f"kube: imported {tag} into the node in {time.monotonic() - started:.0f} s")
    return True


def pause_image(binaries: NodeBinaries) -> str:
    """The sandbox image, `docker import`ed once from the pause binary."""
    tag = f"ray-pixi-test-pause:{binaries.pause.parent.name.removeprefix('pause-')}"
    present = subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                             check=False, timeout=60)  # fmt: skip
    if present.returncode != 0:
        tar = subprocess.run(
            ["tar", "-C", str(binaries.pause.parent), "-c", "--owner=0", "--group=0", "pause"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        subprocess.run(
            ["docker", "import", "--change", 'ENTRYPOINT ["/pause"]', "-", tag],
            input=tar.stdout, capture_output=True, check=True, timeout=120,
        )  # fmt: skip
    return tag


# teardown -----------------------------------------------------------------------------------

def _mounts_under(*roots: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _kill_shims() -> None:
    """containerd's shims of the node's instance (they outlive containerd by design)."""
    marker = str(containerd_socket())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "containerd-shim" in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _cgroup_dirs() -> Iterator[Path]:
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        kubepods = hierarchy / "kubepods"
        if kubepods.is_dir():
            yield kubepods


def _remove_cgroups(log: Log) -> None:
    for kubepods in _cgroup_dirs():
        # Kill what is left inside first, then remove the tree bottom-up.
        for procs in kubepods.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for directory in sorted((d for d in kubepods.rglob("*") if d.is_dir()),
                                key=lambda d: len(d.parts), reverse=True) + [kubepods]:  # fmt: skip
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log(f"kube: could not remove cgroup {directory}")


def remove_containers(binaries: NodeBinaries) -> None:
    """Kill and delete every container of the node's containerd (which must be running), so
    its root keeps only images."""
    if ctr(binaries, "version", timeout=10).returncode != 0:
        return
    tasks = ctr(binaries, "tasks", "ls", "-q", timeout=30).stdout.split()
    for task in tasks:
        ctr(binaries, "tasks", "kill", "-s", "SIGKILL", task, timeout=30)
    for task in tasks:
        ctr(binaries, "tasks", "delete", "-f", task, timeout=30)
    containers = ctr(binaries, "containers", "ls", "-q", timeout=30).stdout.split()
    if containers:
        ctr(binaries, "containers", "delete", *containers, timeout=60)


def teardown(workdir: Path | None, log: Log) -> None:
    """Remove what a node made once its processes are gone: shims, mounts, the bridge,
    kube-proxy's nft tables, the kubepods cgroups, containerd's run dir; restore the kernel
    settings. Safe after a crash, or twice. Hold the node's lock (or run no node)."""
    _kill_shims()
    roots = [RUN_DIR / "containerd", containerd_root()]
    if workdir is not None:
        roots.append(workdir)
    for point in _mounts_under(*roots):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    for family in ("ip", "ip6"):
        subprocess.run(["nft", "delete", "table", family, "kube-proxy"], capture_output=True,
                       check=False)  # fmt: skip
    _remove_cgroups(log)
    # containerd's per-run state (sockets, netns, shim dirs); the root with the images stays.
    shutil.rmtree(RUN_DIR / "containerd", ignore_errors=True)
    restore_kernel_settings(log)


# the node's processes -----------------------------------------------------------------------

class Node:
    """containerd, the kubelet, kube-proxy and CoreDNS for a running control plane.

    `control_plane` gives the API server's URL, the CA, the admin kubeconfig and a way to issue
    certificates (`KubeCluster`). Hold the `NodeLock` for the node's whole life.
    """

    def __init__(self, binaries: NodeBinaries, workdir: Path, *, ip: str, log: Log) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.ip = ip
        self._log = log
        self.services: list[Service] = []
        self.images: list[str] = []

    def start_containerd(self, sandbox_image: str) -> None:
        state = RUN_DIR / "containerd"
        state.mkdir(parents=True, exist_ok=True)
        containerd_root().mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-ray-pixi-node.conflist").write_text(
            json.dumps(cni_conflist(self.workdir / "cni" / "ipam"), indent=2)
        )
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(
            containerd_root(), state, containerd_socket(), self.binaries.cni_bin_dir, cni_conf,
            containerd_ref(sandbox_image),
        ))  # fmt: skip
        service = self._start(
            "containerd", [str(self.binaries.containerd), "--config", str(config)]
        )

        def answering() -> bool:
            service.check()
            return ctr(self.binaries, "version", timeout=10).returncode == 0

        poll(answering, timeout=60, what="containerd", interval=0.2)

    def import_images(self, tags: list[str]) -> None:
        for tag in tags:
            import_image(self.binaries, tag, self._log)
            self.images.append(tag)

    def start_kubelet(self, *, server: str, ca_file: Path, kubelet_client: KeyPair,
                      kubelet_serving: KeyPair) -> None:  # fmt: skip
        kubeconfig = write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", server, ca_file,
            {"client-certificate": str(kubelet_client.cert_file),
             "client-key": str(kubelet_client.key_file)},
        )  # fmt: skip
        config = dump_yaml(self.workdir / "kubelet.yaml", kubelet_config(
            ip=self.ip, port=free_port(), healthz_port=(healthz := free_port()), ca_file=ca_file,
            cert=kubelet_serving.cert_file, key=kubelet_serving.key_file,
            runtime_socket=containerd_socket(),
        ))  # fmt: skip
        save_kernel_settings()
        service = self._start("kubelet", [
            str(self.binaries.kubelet), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.ip}", "--v=1",
        ])  # fmt: skip
        wait_http_ok(service, f"http://127.0.0.1:{healthz}/healthz", timeout=60)

    def start_kube_proxy(self, admin_kubeconfig: Path) -> None:
        healthz = free_port()
        config = dump_yaml(self.workdir / "kube-proxy.yaml", kube_proxy_config(
            kubeconfig=admin_kubeconfig, healthz_port=healthz, metrics_port=free_port(),
        ))  # fmt: skip
        service = self._start(
            "kube-proxy", [str(self.binaries.kube_proxy), f"--config={config}", "--v=1"]
        )
        wait_http_ok(service, f"http://127.0.0.1:{healthz}/healthz", timeout=60)

    def start_coredns(self, admin_kubeconfig: Path) -> None:
        ready = free_port()
        config = self.workdir / "Corefile"
        config.write_text(corefile(ip=self.ip, kubeconfig=admin_kubeconfig,
                                   health_port=free_port(), ready_port=ready))  # fmt: skip
        service = self._start("coredns", [str(self.binaries.coredns), "-conf", str(config)])
        wait_http_ok(service, f"http://127.0.0.1:{ready}/ready", timeout=60)

    def _start(self, name: str, argv: list[str]) -> Service:
        service = Service(name, argv, self.workdir / f"{name}.log").start()
        self.services.append(service)
        return service

    def stop(self) -> None:
        """Stop the processes, newest first; `teardown` then removes what they made."""
        for service in reversed(self.services):
            if service.name != "containerd":
                service.stop()
        if any(s.name == "containerd" and s.running() for s in self.services):
            remove_containers(self.binaries)
        for service in self.services:
            service.stop()
        self.services.clear()
        teardown(self.workdir, self._log)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ray-pixi-node", "cluster": {
            "server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "default", "context": {"cluster": "ray-pixi-node", "user": "user"}}],
        "current-context": "default",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
