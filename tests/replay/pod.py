"""A Pod, as the API server returns it, translated into the `docker run`s a kubelet would make.

Pure: no docker, no files; `runner.py` executes the plan. Everything outside the Pod object
(its IP, where its volumes live on this host, the ConfigMaps and Secrets it reads, a token)
comes from the caller in a `PodContext`, as a kubelet gets it from its node and the API server.

How a Pod maps onto Docker:

- Sandbox: a small container per Pod on the replay's Docker network holds the network
  namespace (Kubernetes' pause container); every container of the Pod joins it with
  `--network container:<sandbox>`, so they share the Pod IP and loopback as in a Pod. The
  sandbox carries the hostname (`spec.hostname` or the Pod name); `shareProcessNamespace`
  joins its PID namespace too.
- /etc/hosts and /etc/resolv.conf are written per Pod and bind-mounted, as the kubelet writes
  them: localhost, the Pod IP with its hostname, `hostAliases`, plus the caller's
  `cluster_hosts` (the stand-in for cluster DNS: headless Service names -> Pod IPs, see
  `build_service_hosts`). resolv.conf has the ClusterFirst search path and a nameserver on the
  Pod's own loopback where nothing answers: a name outside /etc/hosts fails at once, and no
  lookup leaves the machine.
- Init containers run first, in order, each to completion; native sidecars (an init container
  with `restartPolicy: Always`) are started and left running. Then the containers start,
  detached, in order.
- image: used as written, never pulled (`--pull never`); the image must exist locally.
  `command` -> `--entrypoint` + its first arguments (which clears the image's CMD, as
  Kubernetes does), `args` -> the rest; `$(VAR)` references in command, args and env values are
  expanded as the kubelet expands them (`$$` escapes). `workingDir` -> `-w`.
- env (in order, later names win): `envFrom` (configMapRef/secretRef, with prefix), then `env`:
  `value`; `fieldRef` metadata.name/namespace/uid/labels['k']/annotations['k'],
  spec.nodeName/serviceAccountName, status.podIP(s)/hostIP(s); `resourceFieldRef`
  (limits/requests cpu, memory, ephemeral-storage, with divisor; an unset limit is the node's
  allocatable, as the kubelet does); `configMapKeyRef`/`secretKeyRef` from the caller's objects
  (`optional` honoured). Always `-e NAME=value`, never a bare `-e NAME` (which would copy the
  test host's variable).
- Volumes, each a directory or file on this host: emptyDir -> `<pod_dir>/volumes/<name>`
  (mode 0777 as the kubelet makes it; `sizeLimit` not enforced); emptyDir `medium: Memory`
  mounted at /dev/shm -> `--shm-size` (its sizeLimit, else the container's memory limit),
  mounted elsewhere -> `--tmpfs` (per container: not shared between containers as in a Pod);
  hostPath -> `<node_dir>/<path>` (`DirectoryOrCreate` creates it root-owned 0755, as the kubelet
  does; `Directory` must exist; file and socket types are refused); persistentVolumeClaim ->
  the caller's `claims[name]`;
  configMap, secret, downwardAPI and projected volumes (serviceAccountToken from the caller's
  token, configMap, secret, downwardAPI items) -> files written under `<pod_dir>/volumes/`,
  bind-mounted read-only. volumeMounts: `readOnly` -> `:ro`, `subPath`/`subPathExpr` -> a
  subdirectory (created like the kubelet does).
- securityContext (the container's fields over the Pod's): runAsUser/runAsGroup -> `--user`;
  runAsNonRoot -> refused before start when the effective uid is 0 (or a user name the kubelet
  cannot verify), as the kubelet does; fsGroup and supplementalGroups -> `--group-add`, and
  fsGroup also owns emptyDir/PVC directories (group rwx + setgid, as the kubelet's ownership
  change); readOnlyRootFilesystem -> `--read-only`; capabilities -> `--cap-drop`/`--cap-add`;
  allowPrivilegeEscalation: false -> `no-new-privileges`; seccompProfile RuntimeDefault ->
  Docker's default profile, Unconfined or unset -> `seccomp=unconfined` (the kubelet's default
  without `--seccomp-default`); sysctls -> `--sysctl` on the sandbox.
- resources: limits.cpu -> `--cpus`, limits.memory -> `--memory` (= `--memory-swap`: no swap),
  requests.cpu -> `--cpu-shares` (the kubelet's millicores * 1024 / 1000).
- restartPolicy (Pod, or a sidecar's) -> `--restart` (always / on-failure / no);
  terminationGracePeriodSeconds -> `--stop-timeout`.

What Docker cannot express here, so it is left out (never silently faked):
probes (liveness, readiness, startup) and lifecycle hooks (postStart, preStop) are not run;
ephemeral-storage limits, emptyDir sizeLimit and extended resources (GPUs) are not enforced
and nothing is evicted; Service virtual IPs, kube-proxy and cluster DNS do not exist (headless
Service names resolve through /etc/hosts instead); the Service env vars the kubelet injects
(KUBERNETES_SERVICE_HOST, `enableServiceLinks`) are not set, since no Service IP is reachable
(so Ray takes itself as running outside Kubernetes where it checks that variable); the IPC
namespace is not shared between containers; imagePullPolicy and imagePullSecrets mean nothing
without a registry; scheduling fields (nodeSelector, affinity, tolerations, priority) have no
node to act on; AppArmor and SELinux options have no LSM here. `hostNetwork`, `hostPID`,
`hostIPC`, `privileged`, a Localhost seccomp profile and volume types other than the ones
above are refused with the reason.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "ContainerRun",
    "HostDirectory",
    "HostFile",
    "PodContext",
    "PodPlan",
    "ReplayError",
    "build_hosts_file",
    "build_pod_plan",
    "build_resolv_conf",
    "build_sandbox",
    "build_service_hosts",
    "expand",
    "parse_quantity",
]

Obj = Mapping[str, Any]

CLUSTER_DOMAIN = "cluster.local"


class ReplayError(ValueError):
    """The Pod cannot be replayed as written; the message names the field, the value and why."""


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostFile:
    """A file the runner writes before any container starts (config, secret, token, hosts)."""

    path: Path
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class HostDirectory:
    """A directory the runner creates: an emptyDir, a hostPath, a subPath."""

    path: Path
    mode: int = 0o777
    gid: int | None = None  # fsGroup: group-owned, group rwx and setgid
    must_exist: bool = False  # hostPath type Directory


@dataclass(frozen=True)
class ContainerRun:
    """One container of the Pod: `docker run [-d] <options> <image> <command>`."""

    name: str  # the Pod's container name
    docker_name: str
    init: bool
    sidecar: bool  # an init container with restartPolicy Always: started, not waited for
    options: tuple[str, ...]
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # as resolved, for the caller's `docker exec`

    @property
    def argv(self) -> list[str]:
        """The `docker` arguments (a sidecar or a main container runs detached)."""
        detached = ["-d"] if (self.sidecar or not self.init) else []
        return ["run", *detached, *self.options, self.image, *self.command]


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    directories: tuple[HostDirectory, ...]
    files: tuple[HostFile, ...]
    init_containers: tuple[ContainerRun, ...]
    containers: tuple[ContainerRun, ...]

    def container(self, name: str) -> ContainerRun:
        for run in (*self.init_containers, *self.containers):
            if run.name == name:
                return run
        raise KeyError(f"Pod {self.namespace}/{self.name} has no container {name!r}")


@dataclass(frozen=True)
class PodContext:
    """What the kubelet knows besides the Pod object.

    `pod_dir`: this Pod's directory on the host (emptyDirs, config files, /etc/hosts).
    `node_dir`: the replayed node's root, under which hostPath volumes live.
    `claims`: PersistentVolumeClaim name -> host directory.
    `config_maps`, `secrets`: API objects of the Pod's namespace, by name.
    `image_users`: image -> its configured USER (for runAsNonRoot and a lone runAsGroup).
    `cluster_hosts`: name -> IP entries for /etc/hosts (the cluster-DNS stand-in).
    """

    pod_ip: str
    host_ip: str
    sandbox: str
    name_prefix: str
    pod_dir: Path
    node_dir: Path
    node_name: str = "replay-node"
    node_cpu: str = "2"
    node_memory: str = "8Gi"
    claims: Mapping[str, Path] = field(default_factory=dict)
    config_maps: Mapping[str, Obj] = field(default_factory=dict)
    secrets: Mapping[str, Obj] = field(default_factory=dict)
    service_account_token: str | None = None
    image_users: Mapping[str, str] = field(default_factory=dict)
    cluster_hosts: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


# --- quantities and expansion -------------------------------------------------------------------

_SUFFIXES = {
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(value: object, where: str = "quantity") -> Fraction:
    """A Kubernetes quantity ("500m", "2Gi", "1e3", 2) as an exact number."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None:
        raise ReplayError(f"{where} is not a Kubernetes quantity, got {value!r}")
    number = Fraction(match.group(1))
    if match.group(2):
        return number * Fraction(10) ** int(match.group(2)[1:])
    return number * _SUFFIXES[match.group(3) or ""]


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined names replaced, others kept, `$$` -> `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


# --- the Pod's network files --------------------------------------------------------------------


def _hostname(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("hostname") or pod["metadata"]["name"])[:63]


def build_hosts_file(pod: Obj, pod_ip: str, cluster_hosts: Mapping[str, str]) -> str:
    """/etc/hosts as the kubelet writes it, plus the cluster-DNS stand-in's names."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    hostname = _hostname(pod)
    lines = [
        "# Kubernetes-managed hosts file (replayed).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if spec.get("subdomain"):
        fqdn = f"{hostname}.{spec['subdomain']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN}"
        lines.append(f"{pod_ip}\t{fqdn}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    aliases = spec.get("hostAliases") or []
    if aliases:
        lines += ["", "# Entries added by HostAliases."]
        lines += [f"{a['ip']}\t{chr(9).join(a.get('hostnames') or [])}" for a in aliases]
    by_ip: dict[str, list[str]] = {}
    for name, ip in cluster_hosts.items():
        by_ip.setdefault(ip, []).append(name)
    if by_ip:
        lines += ["", "# Cluster DNS stand-in: headless Services of the replay."]
        lines += [f"{ip}\t{' '.join(names)}" for ip, names in by_ip.items()]
    return "\n".join(lines) + "\n"


def build_resolv_conf(pod: Obj) -> str:
    """resolv.conf: the ClusterFirst search path, and no resolver (nothing leaves the host)."""
    namespace = pod["metadata"]["namespace"]
    spec = pod.get("spec") or {}
    config = spec.get("dnsConfig") or {}
    searches = [f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
    if spec.get("dnsPolicy") == "None":
        searches = []
    searches += list(config.get("searches") or [])
    options = ["ndots:5"] + [
        f"{o['name']}:{o['value']}" if o.get("value") is not None else o["name"]
        for o in config.get("options") or []
    ]
    lines = [
        "# Replayed Pod: no cluster DNS; names resolve through /etc/hosts only.",
        "nameserver 127.0.0.1",
    ]
    if searches:
        lines.append("search " + " ".join(searches))
    lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def build_service_hosts(services: Sequence[Obj], pods: Sequence[tuple[Obj, str]]) -> dict[str, str]:
    """Names of headless Services -> the IP of the (first) replayed Pod each selects.

    The cluster DNS answers a headless Service's name with its Pods' IPs; with one Pod behind
    each (KubeRay's head Service) an /etc/hosts entry says the same. Services with a cluster IP
    need kube-proxy, which does not exist here: they are left out.
    """
    hosts: dict[str, str] = {}
    for service in services:
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        if spec.get("clusterIP") != "None" or not selector:
            continue
        namespace = service["metadata"]["namespace"]
        for pod, ip in pods:
            labels = pod["metadata"].get("labels") or {}
            if pod["metadata"]["namespace"] == namespace and all(
                labels.get(k) == v for k, v in selector.items()
            ):
                name = service["metadata"]["name"]
                for alias in (
                    f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}",
                    f"{name}.{namespace}.svc",
                    f"{name}.{namespace}",
                    name,
                ):
                    hosts[alias] = ip
                break
    return hosts


# --- the sandbox ---------------------------------------------------------------------------------


def build_sandbox(
    pod: Obj, *, name: str, network: str, image: str, labels: Mapping[str, str]
) -> list[str]:
    """`docker run` arguments of the Pod's sandbox: it holds the network namespace and sleeps."""
    spec = pod.get("spec") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            raise ReplayError(
                f"Pod {_pod_name(pod)}: spec.{flag} is true; the replay gives every Pod its own "
                "namespaces and cannot share the host's"
            )
    argv = [
        "run", "-d", "--name", name, "--network", network, "--hostname", _hostname(pod),
        "--pull", "never", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--user", "65534:65534", "--init",
    ]  # fmt: skip
    for key, value in sorted(labels.items()):
        argv += ["--label", f"{key}={value}"]
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        argv += ["--sysctl", f"{sysctl['name']}={sysctl['value']}"]
    return [*argv, image, "sleep", "infinity"]


# --- containers ----------------------------------------------------------------------------------


def _pod_name(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _docker_name(prefix: str, pod: Obj, container: str) -> str:
    raw = f"{prefix}-{pod['metadata']['name']}-{container}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)


_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def _field_value(pod: Obj, path: str, context: PodContext, where: str) -> str:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": context.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": context.pod_ip,
        "status.podIPs": context.pod_ip,
        "status.hostIP": context.host_ip,
        "status.hostIPs": context.host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_LABEL.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ReplayError(f"{where}: fieldRef.fieldPath {path!r} is not one the kubelet supports")


def _resource_value(
    pod: Obj, ref: Obj, default_container: Obj | None, context: PodContext, where: str
) -> str:
    name = ref.get("containerName")
    container = default_container
    if name:
        found = [c for c in _all_containers(pod) if c.get("name") == name]
        if not found:
            raise ReplayError(f"{where}: resourceFieldRef.containerName {name!r} is not in the Pod")
        container = found[0]
    if container is None:
        raise ReplayError(f"{where}: resourceFieldRef needs containerName in a volume")
    resource = str(ref.get("resource", ""))
    kind, _, what = resource.partition(".")
    if kind not in ("limits", "requests") or what not in ("cpu", "memory", "ephemeral-storage"):
        raise ReplayError(f"{where}: resourceFieldRef.resource {resource!r} is not supported")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(what)
    if raw is None and kind == "limits":  # the kubelet uses the node's allocatable
        raw = {"cpu": context.node_cpu, "memory": context.node_memory}.get(what, "0")
    amount = parse_quantity(raw or "0", where)
    divisor = parse_quantity(ref.get("divisor") or "1", f"{where}: divisor")
    return str(math.ceil(amount / divisor))


def _object_data(obj: Obj, secret: bool) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if secret else str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    for key, value in (obj.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


def _lookup(
    context: PodContext, kind: str, name: str, optional: bool, where: str
) -> dict[str, bytes] | None:
    objects = context.secrets if kind == "Secret" else context.config_maps
    if name in objects:
        return _object_data(objects[name], secret=kind == "Secret")
    if optional:
        return None
    raise ReplayError(
        f"{where}: {kind} {name!r} is not among the objects given to the replay "
        f"(the kubelet would keep the Pod waiting); pass it in PodContext"
    )


def _env(pod: Obj, container: Obj, context: PodContext, where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for index, source in enumerate(container.get("envFrom") or []):
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = source[key]
                data = _lookup(
                    context, kind, ref["name"], bool(ref.get("optional")),
                    f"{where}.envFrom[{index}]",
                )  # fmt: skip
                for name, value in (data or {}).items():
                    env[prefix + name] = value.decode()
    for index, var in enumerate(container.get("env") or []):
        name = var["name"]
        here = f"{where}.env[{index}] ({name})"
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = _field_value(pod, source["fieldRef"]["fieldPath"], context, here)
        elif "resourceFieldRef" in source:
            env[name] = _resource_value(pod, source["resourceFieldRef"], container, context, here)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, ref = (
                ("ConfigMap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("Secret", source["secretKeyRef"])
            )
            optional = bool(ref.get("optional"))
            data = _lookup(context, kind, ref["name"], optional, here)
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]].decode()
            elif not optional:
                raise ReplayError(f"{here}: {kind} {ref['name']!r} has no key {ref['key']!r}")
        else:
            raise ReplayError(f"{here}: valueFrom {sorted(source)} is not supported")
    return env


def _all_containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


@dataclass
class _Volumes:
    """What the Pod's volumes become on the host, built once per Pod."""

    sources: dict[str, Path | tuple[str, Obj]]  # host path, or ("memory", emptyDir)
    directories: list[HostDirectory]
    files: list[HostFile]
    read_only: set[str]  # volumes Kubernetes always mounts read-only


def _projection_files(
    pod: Obj, base: Path, sources: Sequence[Obj], mode: int, context: PodContext, where: str
) -> list[HostFile]:
    files: list[HostFile] = []

    def add(relative: str, content: bytes, item_mode: int | None) -> None:
        path = PurePosixPath(relative)
        if path.is_absolute() or ".." in path.parts:
            raise ReplayError(f"{where}: item path {relative!r} must be relative, without '..'")
        files.append(HostFile(base / path, content, item_mode if item_mode is not None else mode))

    for source in sources:
        if "serviceAccountToken" in source:
            if context.service_account_token is None:
                raise ReplayError(
                    f"{where}: a serviceAccountToken projection needs a token: pass "
                    "PodContext.service_account_token (e.g. a TokenRequest of the Pod's account)"
                )
            token = source["serviceAccountToken"]
            add(token.get("path", "token"), context.service_account_token.encode(), None)
        elif "configMap" in source or "secret" in source:
            kind = "ConfigMap" if "configMap" in source else "Secret"
            ref = source["configMap" if kind == "ConfigMap" else "secret"]
            name = ref.get("name") or ref.get("secretName")
            data = _lookup(context, kind, name, bool(ref.get("optional")), where)
            if data is None:
                continue
            items = ref.get("items")
            if items:
                for item in items:
                    if item["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise ReplayError(f"{where}: {kind} {name!r} has no key {item['key']!r}")
                    add(item["path"], data[item["key"]], item.get("mode"))
            else:
                for key, value in data.items():
                    add(key, value, None)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    text = _field_value(pod, item["fieldRef"]["fieldPath"], context, where)
                else:
                    text = _resource_value(pod, item["resourceFieldRef"], None, context, where)
                add(item["path"], text.encode(), item.get("mode"))
        else:
            raise ReplayError(f"{where}: projected source {sorted(source)} is not supported")
    return files


def _volumes(pod: Obj, context: PodContext) -> _Volumes:
    spec = pod.get("spec") or {}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    result = _Volumes({}, [], [], set())
    for index, volume in enumerate(spec.get("volumes") or []):
        name = volume["name"]
        where = f"Pod {_pod_name(pod)} spec.volumes[{index}] ({name})"
        base = context.pod_dir / "volumes" / name
        if "emptyDir" in volume:
            if (volume["emptyDir"] or {}).get("medium") == "Memory":
                result.sources[name] = ("memory", volume["emptyDir"] or {})
                continue
            result.directories.append(HostDirectory(base, 0o777, fs_group))
            result.sources[name] = base
        elif "hostPath" in volume:
            host_path = volume["hostPath"]
            path = PurePosixPath(host_path["path"])
            if not path.is_absolute() or ".." in path.parts:
                raise ReplayError(f"{where}: hostPath.path must be absolute, got {str(path)!r}")
            target = context.node_dir / path.relative_to("/")
            kind = host_path.get("type") or ""
            if kind == "DirectoryOrCreate":
                result.directories.append(HostDirectory(target, 0o755))
            elif kind == "Directory":
                result.directories.append(HostDirectory(target, must_exist=True))
            elif kind != "":
                raise ReplayError(
                    f"{where}: hostPath.type {kind!r} is not supported; use Directory, "
                    "DirectoryOrCreate or no type"
                )
            result.sources[name] = target
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in context.claims:
                raise ReplayError(
                    f"{where}: PersistentVolumeClaim {claim!r} has no host directory: pass "
                    "PodContext.claims={name: directory}"
                )
            result.directories.append(HostDirectory(context.claims[claim], 0o777, fs_group))
            result.sources[name] = context.claims[claim]
            if volume["persistentVolumeClaim"].get("readOnly"):
                result.read_only.add(name)
        elif "configMap" in volume or "secret" in volume or "projected" in volume or (
            "downwardAPI" in volume
        ):
            if "projected" in volume:
                sources = volume["projected"].get("sources") or []
                mode = volume["projected"].get("defaultMode", 0o644)
            elif "downwardAPI" in volume:
                sources = [{"downwardAPI": volume["downwardAPI"]}]
                mode = volume["downwardAPI"].get("defaultMode", 0o644)
            else:
                key = "configMap" if "configMap" in volume else "secret"
                sources = [{key: volume[key]}]
                mode = volume[key].get("defaultMode", 0o644)
            result.files += _projection_files(pod, base, sources, mode, context, where)
            result.directories.append(HostDirectory(base, 0o755))
            result.sources[name] = base
            result.read_only.add(name)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise ReplayError(
                f"{where}: volume type {kinds} cannot be replayed; use emptyDir, hostPath, "
                "persistentVolumeClaim, configMap, secret, downwardAPI or projected"
            )
    return result


def _user(security: Obj, image: str, context: PodContext, where: str) -> list[str]:
    """`--user` for runAsUser/runAsGroup, after the kubelet's runAsNonRoot check."""
    uid, gid = security.get("runAsUser"), security.get("runAsGroup")
    if uid is None and (gid is not None or security.get("runAsNonRoot")):
        if image not in context.image_users:
            raise ReplayError(
                f"{where}: runAsNonRoot or a lone runAsGroup needs the image's user: pass "
                f"PodContext.image_users[{image!r}] (its configured USER)"
            )
        image_uid = context.image_users[image].split(":")[0]
        if security.get("runAsNonRoot"):
            _check_non_root(image_uid, where, image)
        if gid is None:
            return []
        uid = image_uid or "0"
    if uid is None:
        return []
    if security.get("runAsNonRoot"):
        _check_non_root(str(uid), where, image)
    return ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]


def _check_non_root(uid: str, where: str, image: str) -> None:
    """The kubelet's runAsNonRoot check (CreateContainerConfigError)."""
    if uid in ("", "0", "root"):
        raise ReplayError(f"{where}: container has runAsNonRoot and image {image} will run as root")
    if not uid.isdigit():
        raise ReplayError(
            f"{where}: container has runAsNonRoot and image {image} has non-numeric user "
            f"({uid}), cannot verify user is non-root"
        )


def _security_options(pod: Obj, container: Obj, where: str) -> tuple[dict[str, Any], list[str]]:
    pod_security = (pod.get("spec") or {}).get("securityContext") or {}
    security = {
        k: pod_security[k]
        for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")
        if k in pod_security
    }
    security.update(container.get("securityContext") or {})
    options: list[str] = []
    if security.get("privileged"):
        raise ReplayError(f"{where}: securityContext.privileged cannot run on this Docker daemon")
    groups = [pod_security["fsGroup"]] if pod_security.get("fsGroup") is not None else []
    groups += pod_security.get("supplementalGroups") or []
    for group in dict.fromkeys(groups):
        options += ["--group-add", str(group)]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    capabilities = security.get("capabilities") or {}
    for cap in capabilities.get("drop") or []:
        options += ["--cap-drop", str(cap)]
    for cap in capabilities.get("add") or []:
        options += ["--cap-add", str(cap)]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    seccomp = (security.get("seccompProfile") or {}).get("type", "Unconfined")
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise ReplayError(f"{where}: seccompProfile type {seccomp!r} is not supported here")
    return security, options


def _resource_options(container: Obj, where: str) -> list[str]:
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    options: list[str] = []
    if "cpu" in limits:
        cpus = parse_quantity(limits["cpu"], f"{where}.resources.limits.cpu")
        options += ["--cpus", format(float(cpus), "g")]
    if "memory" in limits:
        memory = math.ceil(parse_quantity(limits["memory"], f"{where}.resources.limits.memory"))
        options += ["--memory", str(memory), "--memory-swap", str(memory)]
    if "cpu" in requests:
        millicores = parse_quantity(requests["cpu"], f"{where}.resources.requests.cpu") * 1000
        options += ["--cpu-shares", str(max(2, math.floor(millicores * 1024 / 1000)))]
    return options


def _mount_options(
    pod: Obj,
    container: Obj,
    volumes: _Volumes,
    env: Mapping[str, str],
    where: str,
) -> tuple[list[str], list[HostDirectory]]:
    options: list[str] = []
    directories: list[HostDirectory] = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        here = f"{where}.volumeMounts[{index}]"
        name, path = mount["name"], mount["mountPath"]
        if name not in volumes.sources:
            raise ReplayError(f"{here}: no volume named {name!r} in the Pod")
        source = volumes.sources[name]
        if isinstance(source, tuple):  # a Memory emptyDir
            size = source[1].get("sizeLimit")
            if path == "/dev/shm":
                limit = size or ((container.get("resources") or {}).get("limits") or {}).get(
                    "memory"
                )
                if limit is not None:
                    options += ["--shm-size", str(math.ceil(parse_quantity(limit, here)))]
            else:
                tmpfs = f"{path}:mode=1777"
                if size is not None:
                    tmpfs += f",size={math.ceil(parse_quantity(size, here))}"
                options += ["--tmpfs", tmpfs]
            continue
        sub = mount.get("subPath") or ""
        if mount.get("subPathExpr"):
            sub = expand(mount["subPathExpr"], env)
        host = source
        if sub:
            relative = PurePosixPath(sub)
            if relative.is_absolute() or ".." in relative.parts:
                raise ReplayError(f"{here}: subPath must be relative, without '..', got {sub!r}")
            host = source / relative
            directories.append(HostDirectory(host, 0o777))
        read_only = bool(mount.get("readOnly")) or name in volumes.read_only
        options += ["-v", f"{host}:{path}{':ro' if read_only else ''}"]
    return options, directories


def _command(container: Obj, env: Mapping[str, str]) -> tuple[list[str], tuple[str, ...]]:
    command = [expand(str(part), env) for part in container.get("command") or []]
    args = [expand(str(part), env) for part in container.get("args") or []]
    if command:
        return ["--entrypoint", command[0]], (*command[1:], *args)
    return [], tuple(args)


def _container_run(
    pod: Obj,
    container: Obj,
    *,
    init: bool,
    volumes: _Volumes,
    context: PodContext,
    network_files: list[str],
    where: str,
) -> tuple[ContainerRun, list[HostDirectory]]:
    image = container.get("image")
    if not image:
        raise ReplayError(f"{where}: no image")
    env = _env(pod, container, context, where)
    security, security_options = _security_options(pod, container, where)
    user_options = _user(security, image, context, where)
    mounts, directories = _mount_options(pod, container, volumes, env, where)
    entrypoint, command = _command(container, env)
    spec = pod.get("spec") or {}
    restart = container.get("restartPolicy") if init else spec.get("restartPolicy", "Always")
    sidecar = init and restart == "Always"
    docker_name = _docker_name(context.name_prefix, pod, container["name"])
    options = ["--name", docker_name, "--network", f"container:{context.sandbox}"]
    if spec.get("shareProcessNamespace"):
        options += ["--pid", f"container:{context.sandbox}"]
    options += ["--pull", "never", *network_files]
    if not init or sidecar:
        policy = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}[restart or "Always"]
        options += ["--restart", policy]
    options += ["--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]
    labels = {
        **context.labels,
        "io.kubernetes.pod.name": pod["metadata"]["name"],
        "io.kubernetes.pod.namespace": pod["metadata"]["namespace"],
        "io.kubernetes.container.name": container["name"],
    }
    for key, value in sorted(labels.items()):
        options += ["--label", f"{key}={value}"]
    options += user_options + security_options + _resource_options(container, where) + mounts
    if container.get("workingDir"):
        options += ["-w", container["workingDir"]]
    for name, value in env.items():
        options += ["-e", f"{name}={value}"]
    options += entrypoint
    run = ContainerRun(
        name=container["name"],
        docker_name=docker_name,
        init=init,
        sidecar=sidecar,
        options=tuple(options),
        image=image,
        command=command,
        env=tuple(env.items()),
    )
    return run, directories


def build_pod_plan(pod: Obj, context: PodContext) -> PodPlan:
    """The host directories and files, then the init containers and containers to run."""
    spec = pod.get("spec") or {}
    if not spec.get("containers"):
        raise ReplayError(f"Pod {_pod_name(pod)}: spec.containers is empty")
    volumes = _volumes(pod, context)
    hosts = context.pod_dir / "etc" / "hosts"
    resolv = context.pod_dir / "etc" / "resolv.conf"
    files = [
        *volumes.files,
        HostFile(hosts, build_hosts_file(pod, context.pod_ip, context.cluster_hosts).encode()),
        HostFile(resolv, build_resolv_conf(pod).encode()),
    ]
    network_files = ["-v", f"{hosts}:/etc/hosts:ro", "-v", f"{resolv}:/etc/resolv.conf:ro"]
    directories = list(volumes.directories)
    runs: dict[bool, list[ContainerRun]] = {True: [], False: []}
    for init, key in ((True, "initContainers"), (False, "containers")):
        for index, container in enumerate(spec.get(key) or []):
            where = f"Pod {_pod_name(pod)} spec.{key}[{index}] ({container.get('name')})"
            run, extra = _container_run(
                pod, container, init=init, volumes=volumes, context=context,
                network_files=network_files, where=where,
            )  # fmt: skip
            runs[init].append(run)
            directories += extra
    return PodPlan(
        namespace=pod["metadata"]["namespace"],
        name=pod["metadata"]["name"],
        directories=tuple(dict.fromkeys(directories)),
        files=tuple(files),
        init_containers=tuple(runs[True]),
        containers=tuple(runs[False]),
    )
