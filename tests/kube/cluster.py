"""etcd + kube-apiserver + kube-controller-manager + the KubeRay operator as plain processes,
and with `node=` a real node (see node.py) and the scheduler.

Without the node no scheduler or kubelet runs: Pods stay Pending, which is enough to read
the specs KubeRay builds. The controller-manager runs either way: new namespaces get their
`default` ServiceAccount and `kube-root-ca.crt`, deleted ones are emptied by the namespace
controller. With the node kube-proxy routes Services; without it no Service has endpoints (a
webhook under test there is configured by URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .node import (
    NODE_NAME,
    Node,
    NodeBinaries,
    NodeLock,
    node_ip,
    pause_image,
    teardown,
)
from .pki import CertificateAuthority, write_service_account_keys
from .process import Service, StartupError, free_port, wait_http_ok
from .rest import ApiError, Rest, poll

__all__ = [
    "KubeCluster",
    "Service",
    "StartupError",
    "kuberay_crds_dir",
]

REPO = Path(__file__).resolve().parents[2]
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# The API server's own record of every request a ServiceAccount makes (the operators under
# test run as ServiceAccounts; KubeRay and the tests as the admin, not recorded): what a
# test or a benchmark counts API calls with, from outside the process it measures.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "ray-pixi-admin"

Log = Callable[[str], None]


def kuberay_crds_dir() -> Path:
    """`$RAY_PIXI_KUBERAY_CRDS`, else `shared/kuberay/crds` beside the repository."""
    explicit = os.environ.get("RAY_PIXI_KUBERAY_CRDS")
    return Path(explicit) if explicit else REPO.parent / "shared" / "kuberay" / "crds"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kuberay_operator: Path
    kube_controller_manager: Path

    @classmethod
    def from_paths(cls, paths: dict[str, Path]) -> Binaries:
        """From `build.ensure_all`'s answer (binaries by component name)."""
        return cls(
            etcd=paths["etcd"],
            kube_apiserver=paths["kube-apiserver"],
            kuberay_operator=paths["kuberay-operator"],
            kube_controller_manager=paths["kube-controller-manager"],
        )


class KubeCluster:
    """A running cluster; use `start()` / `stop()` or the context manager.

    Public surface (the fixture contract): `server`, `ca_file`, `admin_kubeconfig`,
    `kubeconfig_for_token()`, `service_account_token()`, `api_client()`, plus `rest()`,
    `apply()`, `path_for()`, `create_namespace()`, `delete_namespace()` and
    `start_kuberay()` / `stop_kuberay()`.
    """

    def __init__(
        self,
        binaries: Binaries,
        *,
        log: Log = print,
        workdir: Path | None = None,
        node: NodeBinaries | None = None,
        images: Sequence[str] = (),
    ):
        """`node`: also run a real node (kubelet, containerd, kube-proxy, CoreDNS) and the
        scheduler and controller-manager, with Docker `images` imported into it."""
        self.binaries = binaries
        self.node_binaries = node
        self.node_images = list(images)
        self.node: Node | None = None
        self.node_lock: NodeLock | None = None
        self.controllers: list[Service] = []
        self.node_ip = node_ip() if node else "127.0.0.1"
        self._log = log
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="ray-pixi-kube-"))
        self.etcd: Service | None = None
        self.apiserver: Service | None = None
        self.kuberay: Service | None = None
        self.server = ""
        self._dynamic: Any = None  # kubernetes.dynamic.DynamicClient, made on first use
        self._kubeconfigs = 0

    # lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> KubeCluster:
        started = time.monotonic()
        try:
            if self.node_binaries is not None:
                self.node_lock = NodeLock(self._log)
                teardown(None, self._log)  # whatever a killed run left behind
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._install_crds()
            self._start_controller_manager()
            if self.node_binaries is not None:
                self._start_node(self.node_binaries)
            self.start_kuberay()
        except BaseException:
            self.stop()
            raise
        self._log(
            f"kube: cluster up in {time.monotonic() - started:.1f} s at {self.server} "
            f"(kubeconfig {self.admin_kubeconfig})"
        )
        return self

    def _start_controller_manager(self) -> None:
        """The controllers a cluster runs: new namespaces get their `default` ServiceAccount
        and `kube-root-ca.crt`, deleted ones are emptied, Deployments get ReplicaSets and Pods
        (Pending without a node), owners' dependents are collected."""
        manager = Service("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), f"--kubeconfig={self.admin_kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--service-account-private-key-file={self.sa_keys.key_file}",
            f"--root-ca-file={self.ca_file}", "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle", "--v=1",
        ], self.workdir / "kube-controller-manager.log").start()  # fmt: skip
        self.controllers.append(manager)
        admin = self.rest()

        def serving() -> bool:
            manager.check()
            return bool(admin.exists("/api/v1/namespaces/default/serviceaccounts/default"))

        try:
            poll(serving, timeout=60, what="the controller-manager's default ServiceAccount")
        except TimeoutError as error:
            raise StartupError(f"{error}; log {manager.log_file}:\n{manager.tail()}") from None

    def _start_node(self, binaries: NodeBinaries) -> None:
        """The scheduler, then the node; ready when the node is Ready."""
        started = time.monotonic()
        self.controllers.append(Service("kube-scheduler", [
            str(binaries.kube_scheduler), f"--kubeconfig={self.admin_kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--v=1",
        ], self.workdir / "kube-scheduler.log").start())  # fmt: skip
        node_dir = self.workdir / "node"
        node_dir.mkdir(exist_ok=True)
        self.node = Node(binaries, node_dir, ip=self.node_ip, log=self._log)
        sandbox = pause_image(binaries)
        self.node.start_containerd(sandbox)
        imported = time.monotonic()
        self.node.import_images([sandbox, *self.node_images])
        imported = time.monotonic() - imported
        self.node.start_kubelet(
            server=f"https://{self.node_ip}:{self.port}", ca_file=self.ca_file,
            kubelet_client=self.kubelet_client, kubelet_serving=self.kubelet_serving,
        )  # fmt: skip
        self.node.start_kube_proxy(self.admin_kubeconfig)
        self.node.start_coredns(self.admin_kubeconfig)
        admin = self.rest()

        def node_ready() -> bool:
            for service in [*self.controllers, *self.node.services]:  # type: ignore[union-attr]
                service.check()
            try:
                node = admin.get(f"/api/v1/nodes/{NODE_NAME}")
            except ApiError:
                return False
            conditions = node.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        poll(node_ready, timeout=120, what=f"node {NODE_NAME} Ready")
        self._log(
            f"kube: node {NODE_NAME} Ready at {self.node_ip} in "
            f"{time.monotonic() - started:.1f} s (images imported in {imported:.1f} s)"
        )

    def stop(self) -> None:
        if self.kuberay is not None:
            self.kuberay.stop()
        if self.node is not None:
            self.node.stop()
            self.node = None
        for controller in reversed(self.controllers):
            controller.stop()
        self.controllers.clear()
        for service in (self.apiserver, self.etcd):
            if service is not None:
                service.stop()
        if self.node_lock is not None:
            if self.node_binaries is not None:
                teardown(None, self._log)
            self.node_lock.close()
            self.node_lock = None
        if self._dynamic is not None:
            self._dynamic.client.close()
            self._dynamic = None
        if self._own_workdir and not os.environ.get("RAY_PIXI_KUBE_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir.exists():
            self._log(f"kube: kept {self.workdir} (RAY_PIXI_KUBE_KEEP is set)")

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(pki)
        self.ca_file = self.ca.cert_file
        self.serving = self.ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "10.96.0.1",
                self.node_ip,
            ),
            server=True,
        )
        # The node's kubelet: a client of the API server (the Node authorizer's user), and a
        # server the API server reaches for logs and exec.
        self.kubelet_client = self.ca.issue(
            "kubelet-client", f"system:node:{NODE_NAME}", organizations=("system:nodes",),
            client=True,
        )  # fmt: skip
        self.kubelet_serving = self.ca.issue(
            "kubelet-serving", NODE_NAME, hosts=(self.node_ip, NODE_NAME), server=True
        )
        self.apiserver_kubelet_client = self.ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
            organizations=("system:masters",), client=True,
        )  # fmt: skip
        # system:masters is the superuser group: RBAC is bypassed for it, as for kubeadm's
        # admin.conf. Everyone else (tokens) goes through the RBAC authorizer.
        self.admin = self.ca.issue(
            "admin", ADMIN_USER, organizations=("system:masters",), client=True
        )
        self.sa_keys = write_service_account_keys(pki)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        data = self.workdir / "etcd"
        self.etcd_url = f"http://127.0.0.1:{client}"
        self.etcd = Service(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=ray-pixi",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=ray-pixi=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--logger=zap",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        ).start()
        wait_http_ok(self.etcd, f"{self.etcd_url}/health", timeout=30)

    def _start_apiserver(self) -> None:
        self.port = port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.workdir / "pki"
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self.audit_log = self.workdir / "audit.log"
        if self.node_binaries is None:
            network = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--authorization-mode=RBAC",
                # The `kubernetes` Service's endpoints would point at 127.0.0.1, which
                # Endpoints validation refuses; nothing in the box routes to it anyway.
                "--endpoint-reconciler-type=none",
            ]
        else:
            # The node reaches it at the machine's address; Services are kube-proxy's.
            network = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.node_ip}",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={self.apiserver_kubelet_client.cert_file}",
                f"--kubelet-client-key={self.apiserver_kubelet_client.key_file}",
                f"--kubelet-certificate-authority={self.ca_file}",
                # Else logs and exec through the API fail: `lookup <node>: no such host`.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
            ]
        self.apiserver = Service(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                *network,
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={self.serving.cert_file}",
                f"--tls-private-key-file={self.serving.key_file}",
                f"--client-ca-file={self.ca_file}",
                "--anonymous-auth=false",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.sa_keys.cert_file}",
                f"--service-account-signing-key-file={self.sa_keys.key_file}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--profiling=false",
                "--v=1",
            ],
            self.workdir / "kube-apiserver.log",
        ).start()
        self.admin_kubeconfig = self._write_kubeconfig(
            "admin",
            {
                "client-certificate": str(self.admin.cert_file),
                "client-key": str(self.admin.key_file),
            },
        )
        admin = self.rest()

        def ready() -> bool:
            assert self.apiserver is not None
            self.apiserver.check()
            try:
                admin.request("GET", "/readyz")
            except (OSError, ApiError):
                return False
            return True

        try:
            poll(ready, timeout=90, what=f"kube-apiserver /readyz at {self.server}")
        except TimeoutError as error:
            raise StartupError(
                f"{error}; log {self.apiserver.log_file}:\n{self.apiserver.tail()}"
            ) from None

    def _install_crds(self) -> None:
        crds_dir = kuberay_crds_dir()
        files = sorted(crds_dir.glob("*.yaml"))
        if not files:
            raise StartupError(
                f"no KubeRay CRDs in {crds_dir} (set RAY_PIXI_KUBERAY_CRDS to their folder)"
            )
        admin = self.rest()
        names = []
        for path in files:
            # libyaml's loader when present: the three CRDs are 3 MB of YAML.
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            for crd in yaml.load_all(path.read_text(), Loader=loader):  # noqa: S506
                if crd:
                    admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
                    names.append(crd["metadata"]["name"])

        def established(name: str) -> bool:
            crd = admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for name in names:
            poll(lambda n=name: established(n), timeout=30, what=f"CRD {name} Established")

    def start_kuberay(self, extra_env: dict[str, str] | None = None) -> None:
        """Start (or restart) the KubeRay operator as admin, watching all namespaces."""
        self.stop_kuberay()
        probe = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.admin_kubeconfig), **(extra_env or {})}
        # With a node, KubeRay (a host process: no cluster DNS) reaches a head's dashboard,
        # to follow a RayJob or a RayService, through the API server's Service proxy, which
        # dials the head Pod's IP; by the Service's DNS name it would never resolve it.
        proxy = ["--use-kubernetes-proxy"] if self.node_binaries is not None else []
        self.kuberay = Service(
            "kuberay-operator",
            [
                str(self.binaries.kuberay_operator),
                "--enable-leader-election=false",
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                "--log-stdout-encoder=console",
                *proxy,
            ],
            self.workdir / "kuberay-operator.log",
            env=env,
        ).start()
        wait_http_ok(self.kuberay, f"http://127.0.0.1:{probe}/readyz", timeout=60)

    def stop_kuberay(self) -> None:
        if self.kuberay is not None:
            self.kuberay.stop()
            self.kuberay = None

    # access --------------------------------------------------------------------------

    def _write_kubeconfig(self, name: str, user: dict[str, str]) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "ray-pixi-box",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "ray-pixi-box", "user": name}}],
            "current-context": name,
        }
        directory = self.workdir / "kubeconfigs"
        directory.mkdir(exist_ok=True)
        self._kubeconfigs += 1
        path = directory / f"{self._kubeconfigs:03d}-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def kubeconfig_for_token(self, token: str, name: str = "token-user") -> Path:
        """A kubeconfig that authenticates with a bearer `token` (RBAC applies)."""
        return self._write_kubeconfig(name, {"token": token})

    def rest(self, token: str | None = None) -> Rest:
        """A REST client as admin, or as the bearer of `token`."""
        if token is not None:
            return Rest(self.server, self.ca_file, token=token)
        return Rest(
            self.server, self.ca_file, cert_file=self.admin.cert_file, key_file=self.admin.key_file
        )

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` as admin (close it, or use it as a context)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        audiences: Iterable[str] = (),
        expiration_seconds: int = 4 * 3600,
    ) -> str:
        """A token for an existing ServiceAccount, issued through the TokenRequest API."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": list(audiences) or None, "expirationSeconds": expiration_seconds},
        }
        try:
            answer = self.rest().create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request
            )
        except ApiError as error:
            if error.status == 404:
                raise LookupError(
                    f"ServiceAccount {namespace}/{name} does not exist; create it (e.g. by "
                    "applying the chart's manifests) before asking for its token"
                ) from None
            raise
        return str(answer["status"]["token"])

    # objects -------------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        """What discovery says about a kind: the `kubernetes` client's DynamicClient, whose
        discoverer searches again when a kind is missing (a CRD installed since)."""
        from kubernetes.dynamic import DynamicClient
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        if self._dynamic is None:
            self._dynamic = DynamicClient(
                self.api_client(), cache_file=str(self.workdir / "discovery.json")
            )
        try:
            return self._dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise LookupError(f"the API server serves no {kind} in {api_version}") from None

    def path_for(
        self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None
    ) -> str:
        """The REST path of a kind's collection (or of one object when `name` is given)."""
        resource = self._resource(api_version, kind)
        if resource.namespaced and not namespace:
            raise ValueError(f"{resource.name} are namespaced: give a namespace")
        return str(resource.path(name=name, namespace=namespace if resource.namespaced else None))

    def apply(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create `obj`, or replace it if it exists (a client-side `kubectl apply`)."""
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace") or namespace
        if self._resource(obj["apiVersion"], obj["kind"]).namespaced:
            meta["namespace"] = namespace
        path = self.path_for(obj["apiVersion"], obj["kind"], namespace)
        admin = self.rest()
        try:
            return dict(admin.create(path, obj))
        except ApiError as error:
            if error.status != 409:
                raise
        current = admin.get(f"{path}/{meta['name']}")
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return dict(admin.replace(f"{path}/{meta['name']}", obj))

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create a namespace; return once the controller-manager gave it its `default`
        ServiceAccount (the ServiceAccount admission plugin refuses Pods without it)."""
        admin = self.rest()
        admin.create(
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            },
        )
        poll(lambda: admin.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
             timeout=30, what=f"ServiceAccount {name}/default")  # fmt: skip
        return name

    def delete_namespace(self, name: str, timeout: float = 120) -> None:
        """Delete a namespace (the namespace controller deletes what is in it) and wait until
        it is gone. Finalizers whose controller a test stopped (an uninstalled operator) would
        pin it forever: after half the time they are removed, as an admin would."""
        admin = self.rest()
        if admin.delete(f"/api/v1/namespaces/{name}", missing_ok=True) is None:
            return

        def gone() -> bool:
            return not admin.exists(f"/api/v1/namespaces/{name}")

        with contextlib.suppress(TimeoutError):
            poll(gone, timeout=timeout / 2, what=f"namespace {name} to be deleted", interval=0.5)
            return
        for resource in self._resources().values():
            if not (resource.namespaced and "list" in resource.verbs):
                continue
            with contextlib.suppress(ApiError):
                for item in admin.get(resource.path(name)).get("items", []):
                    if item["metadata"].get("finalizers"):
                        with contextlib.suppress(ApiError):
                            admin.merge_patch(resource.path(name, item["metadata"]["name"]),
                                              {"metadata": {"finalizers": None}})  # fmt: skip
        poll(gone, timeout=timeout / 2, what=f"namespace {name} to be deleted", interval=0.5,
             describe=lambda: str(admin.get(f"/api/v1/namespaces/{name}")["status"]))  # fmt: skip

    def audit_events(self, username: str, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The completed requests of ``username`` (a ServiceAccount's full user name) after
        byte offset ``since`` of the audit log, and the offset to read from next time.

        A watch is counted once, when it starts (ResponseStarted); everything else when it
        completes (ResponseComplete).
        """
        if not self.audit_log.exists():
            return [], since
        with self.audit_log.open("rb") as log:
            log.seek(since)
            data = log.read()
        end = since + data.rfind(b"\n") + 1
        events = []
        for line in data[: end - since].splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") != username:
                continue
            watch = event.get("verb") == "watch"
            if event.get("stage") == ("ResponseStarted" if watch else "ResponseComplete"):
                events.append(event)
        return events, end

    def audit_offset(self) -> int:
        """The audit log's current end, for ``audit_events(since=...)``."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def logs(self) -> Iterator[Path]:
        """The components' log files (kept only while the cluster's work dir exists)."""
        yield from sorted([*self.workdir.glob("*.log"), *self.workdir.glob("node/*.log")])
