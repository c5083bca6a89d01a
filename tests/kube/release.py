"""The ray-pixi chart installed on the cluster-in-a-box's node with real Helm.

`install_release` runs `helm install` (helm-python-sdk's Helm library against the harness's
API server: real `lookup`, real release history, so `helm upgrade` and `helm rollback` are
Helm's own). Nothing stands in: the chart's Deployments run the add-on's image as Pods behind
the chart's Service (`PodRole`); `start` waits for their rollout, an upgrade or rollback for
the new ReplicaSet's Pods alone, an outage scales a Deployment to 0, and logs and env come
from the API.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .cluster import KubeCluster
from .manifests import raycluster
from .rest import ApiError, poll

__all__ = ["CHART", "REPO", "PodRole", "Release", "install_release", "render_chart"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ray-pixi"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
ROLES = ("webhook", "reconciler")


def render_chart(values: dict[str, Any], *, name: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's manifests as an offline `helm template` renders them (hooks, NOTES left out)."""
    import helm_python
    import yaml

    rendered = helm_python.Chart.load(str(CHART)).render(
        values, name=name, namespace=namespace, is_install=True
    )
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and "helm.sh/hook" not in ((doc.get("metadata") or {}).get("annotations") or {}):
                documents.append(doc)
    return documents


class PodRole:
    """One Deployment of the release on a cluster with a node: the chart's own Pods, driven
    only as a cluster drives them (scale, delete, rollout) and read through the API."""

    def __init__(self, release: Release, role: str) -> None:
        self.release = release
        self.role = role
        self.admin = release.admin
        # Logs of the role's Pods that are gone (read while they were still terminating).
        self.past_logs: dict[str, str] = {}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.release.deployment(self.role)

    @property
    def deployment_path(self) -> str:
        meta = self.deployment["metadata"]
        return f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}"

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"]["containers"][0])

    @property
    def service_account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.release.namespace}:{self.service_account}"

    def env(self) -> dict[str, str]:
        """The env vars of the Deployment's container, as its Pods get them."""
        return {e["name"]: e.get("value", "") for e in self.container.get("env", [])}

    def pods(self) -> list[dict[str, Any]]:
        """The role's Pods, terminating ones included."""
        selector = ",".join(
            f"{k}={v}" for k, v in self.deployment["spec"]["selector"]["matchLabels"].items()
        )
        return list(self.admin.get(f"/api/v1/namespaces/{self.release.namespace}/pods",
                                   labelSelector=selector)["items"])  # fmt: skip

    def pod_log(self, name: str) -> str:
        """`kubectl logs <pod>`; empty when the Pod or its container is not there (yet)."""
        try:
            return self.admin.request_raw(
                "GET", f"/api/v1/namespaces/{self.release.namespace}/pods/{name}/log"
            ).decode(errors="replace")
        except ApiError:
            return ""

    def keep_logs(self) -> None:
        """Read the logs of the role's Pods now, before a rollout or scale-down removes them."""
        for pod in self.pods():
            name = pod["metadata"]["name"]
            if text := self.pod_log(name):
                self.past_logs[name] = text

    def log(self) -> str:
        """What every Pod of the role wrote, the gone ones included (as far as kept)."""
        self.keep_logs()
        return "\n".join(f"--- {name} ---\n{text}" for name, text in self.past_logs.items())

    def scale(self, replicas: int) -> None:
        self.keep_logs()
        self.admin.merge_patch(f"{self.deployment_path}/scale", {"spec": {"replicas": replicas}})

    def stop(self, timeout: float = 120) -> None:
        """An outage: the Deployment scaled to 0, its Pods gone, the Service without endpoints."""
        self.scale(0)

        def gone() -> bool:
            for pod in self.pods():
                if text := self.pod_log(pod["metadata"]["name"]):
                    self.past_logs[pod["metadata"]["name"]] = text
            return not self.pods() and not self.release.endpoints()

        poll(gone, timeout=timeout, what=f"the {self.role}'s Pods and endpoints to be gone",
             interval=0.5, describe=lambda: self.release._describe_pods(self.role))  # fmt: skip

    def terminate(self) -> None:
        """Scale to 0 without waiting: the ReplicaSet deletes the Pod, the kubelet sends
        SIGTERM, and the Pod drains and exits by itself; no Pod replaces it."""
        self.scale(0)

    def start(self) -> None:
        """Back to the replicas the release asks for, rolled out."""
        (wanted,) = [
            doc["spec"].get("replicas", 1)
            for doc in self.release.manifest
            if doc["kind"] == "Deployment"
            and (doc["metadata"].get("labels") or {}).get("ray-pixi.io/role") == self.role
        ]
        if self.deployment["spec"].get("replicas", 1) != wanted:
            self.scale(wanted)
        self.release.wait_rolled_out(self.role)


class Release:
    """A Helm release of the chart, its webhook and reconciler the chart's Pods on the node."""

    def __init__(self, cluster: KubeCluster, name: str, namespace: str) -> None:
        import helm_python

        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.admin = cluster.rest()
        self.helm = helm_python.Config(
            kubeconfig_path=cluster.admin_kubeconfig, namespace=namespace
        )
        self.manifest: list[dict[str, Any]] = []
        self.owns_namespace = False
        if cluster.node is None:
            raise ValueError("the chart's Pods need a node: KubeCluster(node=...)")
        self.roles = {role: PodRole(self, role) for role in ROLES}

    # Helm ------------------------------------------------------------------------------

    def install(self, values: dict[str, Any]) -> None:
        self._took(self.helm.install(CHART, self.name, values, namespace=self.namespace))

    def upgrade(self, values: dict[str, Any], *, restart: bool = True) -> None:
        """`helm upgrade`, then the new Pods replace the old ones (the rollout, waited for)."""
        self._keep_logs()
        self._took(self.helm.upgrade(CHART, self.name, values, namespace=self.namespace))
        if restart:
            self.restart()

    def rollback(self, revision: int, *, restart: bool = True) -> None:
        self._keep_logs()
        self.helm.rollback(self.name, version=revision)
        self._took(self.helm.status(self.name))
        if restart:
            self.restart()

    def _keep_logs(self) -> None:
        for role in ROLES:
            if self.has(role):
                self.roles[role].keep_logs()

    def _took(self, release: Any) -> None:
        import yaml

        self.manifest = [doc for doc in yaml.safe_load_all(release.get("manifest") or "") if doc]

    def one(self, kind: str, **labels: str) -> dict[str, Any]:
        """The live object of `kind` this release installed (matching `labels`)."""
        found = [
            doc
            for doc in self.manifest
            if doc["kind"] == kind
            and labels.items() <= ((doc.get("metadata") or {}).get("labels") or {}).items()
        ]
        assert len(found) == 1, f"the release has {len(found)} {kind} objects {labels}, expected 1"
        meta = found[0]["metadata"]
        path = self.cluster.path_for(
            found[0]["apiVersion"], kind, meta.get("namespace"), meta["name"]
        )
        return dict(self.admin.get(path))

    def deployment(self, role: str) -> dict[str, Any]:
        return self.one("Deployment", **{"ray-pixi.io/role": role})

    @property
    def webhook_configuration(self) -> dict[str, Any]:
        return self.one("MutatingWebhookConfiguration")

    @property
    def webhook_path(self) -> str:
        return f"{WEBHOOKS}/{self.webhook_configuration['metadata']['name']}"

    @property
    def service(self) -> dict[str, Any]:
        return self.one("Service")

    def has(self, role: str) -> bool:
        return any(
            doc["kind"] == "Deployment"
            and (doc["metadata"].get("labels") or {}).get("ray-pixi.io/role") == role
            for doc in self.manifest
        )

    # the Pods ----------------------------------------------------------------------------------

    @property
    def webhook(self) -> PodRole:
        return self.roles["webhook"]

    @property
    def reconciler(self) -> PodRole:
        return self.roles["reconciler"]

    def start(self) -> None:
        """Wait for the rollout of every role the release deploys; return once the webhook
        injects."""
        for role in ROLES:
            if self.has(role):
                self.roles[role].start()
        if self.has("webhook"):
            self.wait_admitting()

    def wait_rolled_out(self, role: str, timeout: float = 180) -> None:
        """Until the role's Deployment has all its replicas updated and available, as
        `kubectl rollout status` waits."""

        def done() -> bool:
            deployment = self.deployment(role)
            status = deployment.get("status") or {}
            wanted = deployment["spec"].get("replicas", 1)
            return (
                status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
                and status.get("updatedReplicas", 0) == wanted
                and status.get("availableReplicas", 0) == wanted
                and status.get("replicas", 0) == wanted
            )

        poll(done, timeout=timeout, what=f"the {role} Deployment's rollout", interval=0.5,
             describe=lambda: self._describe_pods(role))  # fmt: skip

    def _describe_pods(self, role: str) -> str:
        """The role's Pods as `kubectl get` and `kubectl logs --previous` would show them."""
        selector = ",".join(
            f"{k}={v}" for k, v in self.deployment(role)["spec"]["selector"]["matchLabels"].items()
        )
        pods = self.admin.get(f"/api/v1/namespaces/{self.namespace}/pods",
                              labelSelector=selector)["items"]  # fmt: skip
        lines = []
        for pod in pods:
            name = pod["metadata"]["name"]
            for status in pod["status"].get("containerStatuses") or []:
                lines.append(f"{name}/{status['name']}: {status.get('state')} "
                             f"restarts={status.get('restartCount')}")  # fmt: skip
                if status.get("restartCount"):
                    with contextlib.suppress(ApiError):
                        log = self.admin.request_raw(
                            "GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}/log",
                            params={"container": status["name"], "previous": "true"},
                        ).decode(errors="replace")  # fmt: skip
                        lines.append("  previous log: " + log[-1500:])
        return "\n".join(lines) or "no Pods"

    def wait_replaced(self, role: str, timeout: float = 180) -> None:
        """Until every Pod of the role belongs to the Deployment's newest ReplicaSet (the old
        ReplicaSet's Pods gone, drained), after `wait_rolled_out`."""
        deployment = self.deployment(role)
        revision = deployment["metadata"].get("annotations", {}).get(
            "deployment.kubernetes.io/revision")  # fmt: skip
        sets = self.admin.get(
            f"/apis/apps/v1/namespaces/{self.namespace}/replicasets",
            labelSelector=",".join(
                f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
            ),
        )["items"]
        (newest,) = [
            r for r in sets
            if r["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
            == revision
        ]  # fmt: skip
        current = newest["metadata"]["labels"]["pod-template-hash"]
        role_ = self.roles[role]

        def replaced() -> bool:
            role_.keep_logs()
            return all(
                p["metadata"]["labels"].get("pod-template-hash") == current
                and not p["metadata"].get("deletionTimestamp")
                for p in role_.pods()
            )

        poll(replaced, timeout=timeout, what=f"the {role}'s old Pods to be gone", interval=0.5,
             describe=lambda: self._describe_pods(role))  # fmt: skip

    def endpoints(self) -> list[dict[str, Any]]:
        """The endpoints of the webhook Service's EndpointSlices (terminating ones included)."""
        name = self.service["metadata"]["name"]
        slices = self.admin.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices",
            labelSelector=f"kubernetes.io/service-name={name}",
        )["items"]
        return [e for s in slices for e in s.get("endpoints") or []]

    def restart(self) -> None:
        """Until each role's new Pods serve and its old ones are gone."""
        for role in ROLES:
            if self.has(role):
                self.wait_rolled_out(role)
                self.wait_replaced(role)
        if self.has("webhook"):
            self.wait_admitting()

    def stop(self) -> None:
        for role in ROLES:
            if self.has(role):
                self.roles[role].stop()

    def wait_admitting(self, timeout: float = 90) -> None:
        """Until a dry-run create of a labelled RayCluster comes back injected."""
        probe = raycluster("admission-probe", labels={"ray-pixi.io/enabled": "true"}, workers=0)
        path = self.cluster.path_for("ray.io/v1", "RayCluster", self.namespace)

        def injected() -> bool:
            try:
                answer = self.admin.request("POST", path, probe, params={"dryRun": "All"})
            except ApiError:
                return False
            init = answer["spec"]["headGroupSpec"]["template"]["spec"].get("initContainers", [])
            return any(c["name"] == "ray-pixi-payload" for c in init)

        poll(injected, timeout=timeout, what="the webhook to inject",
             describe=lambda: self._describe_pods("webhook"))  # fmt: skip

    def set_failure_policy(self, policy: str) -> None:
        """What `helm upgrade --set webhook.failurePolicy=...` changes (lookup keeps the CA)."""
        self.admin.json_patch(
            self.webhook_path,
            [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}],
        )

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{role.log()}" for name, role in self.roles.items())

    def uninstall(self) -> None:
        with contextlib.suppress(Exception):
            self.helm.uninstall(self.name, ignore_not_found=True)
        self.helm.close()
        if self.owns_namespace:
            self.cluster.delete_namespace(self.namespace)


def install_release(
    cluster: KubeCluster,
    *,
    name: str = "ray-pixi",
    namespace: str = "ray-pixi-system",
    values: dict[str, Any] | None = None,
    create_namespace: bool = True,
    start: bool = True,
) -> Release:
    """`helm install`, then wait for the roles' Pods to roll out and the webhook to inject."""
    if create_namespace:
        cluster.create_namespace(namespace)
    release = Release(cluster, name, namespace)
    release.owns_namespace = create_namespace
    try:
        release.install(values or {})
        if start:
            release.start()
    except BaseException:
        release.uninstall()
        raise
    return release
