"""The ray-pixi chart installed into the cluster-in-a-box, its operator as a local process.

`install_release` renders `charts/ray-pixi` with the real Helm engine, applies what a
`helm install` would (ServiceAccount, RBAC, the webhook's TLS Secret, Service, Deployment,
MutatingWebhookConfiguration; not test hooks), and runs `ray-pixi-operator run` with the
Deployment's own env vars, the Secret's certificate and key, and a TokenRequest token of
the chart's ServiceAccount, so the chart's RBAC is what the operator gets. The webhook's
Service is routed to the local process (see `services.py`): the configuration is applied
exactly as rendered, `service` clientConfig and generated caBundle included.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .cluster import KubeCluster, Service, free_port
from .manifests import raycluster
from .rest import ApiError, poll

__all__ = ["REPO", "Release", "install_release", "render_chart"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ray-pixi"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# The order `helm install` creates kinds in (Helm's InstallOrder, abridged).
_INSTALL_ORDER = [
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "MutatingWebhookConfiguration",
]


def render_chart(values: dict[str, Any], *, name: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's manifests as `helm install` would create them (hooks and NOTES left out)."""
    import helm_python

    rendered = helm_python.Chart.load(str(CHART)).render(
        values, name=name, namespace=namespace, is_install=True
    )
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if "helm.sh/hook" in ((doc.get("metadata") or {}).get("annotations") or {}):
                continue
            documents.append(doc)
    rank = {kind: i for i, kind in enumerate(_INSTALL_ORDER)}
    return sorted(documents, key=lambda d: rank.get(d["kind"], len(rank)))


def operator_executable() -> str | None:
    """`ray-pixi-operator` next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "ray-pixi-operator"
    return str(beside) if beside.exists() else shutil.which("ray-pixi-operator")


class Release:
    """An installed release and its operator process."""

    def __init__(
        self, cluster: KubeCluster, documents: list[dict[str, Any]], namespace: str, workdir: Path
    ) -> None:
        self.cluster = cluster
        self.documents = documents
        self.namespace = namespace
        self.workdir = workdir
        self.admin = cluster.rest()
        self.deployment = self.one("Deployment")
        self.service = self.one("Service")
        self.webhook = self.one("MutatingWebhookConfiguration")
        self.secret = self.one("Secret")
        pod_spec = self.deployment["spec"]["template"]["spec"]
        self.service_account = pod_spec["serviceAccountName"]
        self.container = pod_spec["containers"][0]
        self.operator: Service | None = None
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.token = ""

    def one(self, kind: str) -> dict[str, Any]:
        found = [d for d in self.documents if d["kind"] == kind]
        assert len(found) == 1, f"the chart rendered {len(found)} {kind} objects, expected 1"
        return found[0]

    @property
    def service_port(self) -> int:
        return int(self.service["spec"]["ports"][0]["port"])

    @property
    def webhook_path(self) -> str:
        return f"{WEBHOOKS}/{self.webhook['metadata']['name']}"

    def operator_env(self) -> dict[str, str]:
        """The Deployment's env vars, with what only differs on this machine replaced."""
        env = {e["name"]: e.get("value", "") for e in self.container.get("env", [])}
        tls = self.workdir / "webhook-tls"
        env.update(
            RAY_PIXI_WEBHOOK_PORT=str(self.webhook_port),
            RAY_PIXI_HEALTH_PORT=str(self.health_port),
            RAY_PIXI_WEBHOOK_CERT_FILE=str(tls / "tls.crt"),
            RAY_PIXI_WEBHOOK_KEY_FILE=str(tls / "tls.key"),
        )
        return env

    def _write_tls(self) -> None:
        # What the Deployment mounts from the Secret at RAY_PIXI_WEBHOOK_CERT_FILE/KEY_FILE.
        tls = self.workdir / "webhook-tls"
        tls.mkdir(exist_ok=True)
        for key in ("tls.crt", "tls.key"):
            (tls / key).write_bytes(base64.b64decode(self.secret["data"][key]))
            (tls / key).chmod(0o600)

    def start_operator(self, executable: str) -> None:
        """Run `ray-pixi-operator run` as the chart's ServiceAccount; wait until it admits."""
        self.stop_operator()
        self.token = self.cluster.service_account_token(self.namespace, self.service_account)
        kubeconfig = self.cluster.kubeconfig_for_token(self.token, self.service_account)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RAY_PIXI_", "KUBERNETES_"))
        }
        env.update(self.operator_env(), KUBECONFIG=str(kubeconfig))
        argv = [executable, *self.container["command"][1:]]
        self.operator = Service(
            "ray-pixi-operator", argv, self.workdir / "operator.log", env=env
        ).start()
        self.wait_admitting()

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def operator_log(self) -> str:
        path = self.workdir / "operator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _healthy(self) -> bool:
        assert self.operator is not None
        self.operator.check()
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed loopback URL
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def wait_admitting(self, timeout: float = 90) -> None:
        """Until a dry-run create of a labelled RayCluster comes back injected."""
        assert self.operator is not None
        describe: Callable[[], str] = lambda: self.operator.tail(20) if self.operator else ""  # noqa: E731
        poll(self._healthy, timeout=timeout, what="the operator's /healthz", describe=describe)
        probe = raycluster("admission-probe", labels={"ray-pixi.io/enabled": "true"}, workers=0)
        path = self.cluster.path_for("ray.io/v1", "RayCluster", self.namespace)

        def injected() -> bool:
            assert self.operator is not None
            self.operator.check()
            try:
                answer = self.admin.request("POST", path, probe, params={"dryRun": "All"})
            except ApiError:
                return False
            init = answer["spec"]["headGroupSpec"]["template"]["spec"].get("initContainers", [])
            return any(c["name"] == "ray-pixi-payload" for c in init)

        poll(injected, timeout=timeout, what="the webhook to inject", describe=describe)

    def set_failure_policy(self, policy: str) -> None:
        """What `helm upgrade --set webhook.failurePolicy=...` changes (lookup keeps the CA)."""
        self.admin.json_patch(
            self.webhook_path,
            [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}],
        )

    def uninstall(self) -> None:
        self.stop_operator()
        self.cluster.unroute_service(
            self.namespace, self.service["metadata"]["name"], self.service_port
        )
        for doc in reversed(self.documents):
            meta = doc["metadata"]
            with contextlib.suppress(ApiError, LookupError):
                path = self.cluster.path_for(
                    doc["apiVersion"], doc["kind"], meta.get("namespace"), meta["name"]
                )
                self.admin.delete(path, missing_ok=True)
        self.cluster.delete_namespace(self.namespace)


def install_release(
    cluster: KubeCluster,
    workdir: Path,
    *,
    executable: str,
    name: str = "ray-pixi",
    namespace: str = "ray-pixi-system",
    values: dict[str, Any] | None = None,
) -> Release:
    """Render, apply, route the webhook Service, and start the operator."""
    documents = render_chart(values or {}, name=name, namespace=namespace)
    cluster.create_namespace(namespace)
    release = Release(cluster, documents, namespace, workdir)
    try:
        for doc in documents:
            cluster.apply(doc, namespace)
        cluster.route_service(
            namespace,
            release.service["metadata"]["name"],
            release.service_port,
            release.webhook_port,
        )
        release._write_tls()
        release.start_operator(executable)
    except BaseException:
        release.uninstall()
        raise
    return release
