"""The operator (`ray-pixi-operator run`, i.e. kopf) against a real kube-apiserver and KubeRay.

Uses the cluster-in-a-box of tests/kube: the API server calls the add-on's webhook over TLS
through a MutatingWebhookConfiguration like the chart's, and KubeRay builds Pod objects
(they stay Pending: there is no scheduler or kubelet). What is checked is what a user sees:
the stored RayCluster, the Pods KubeRay built from it, and the events and status annotation
the reconciler writes.
"""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import PAYLOAD_IMAGE, load_manifest
from ray_pixi_operator import Settings, names, prepare

from support import free_port, poll

pytestmark = pytest.mark.apiserver
# The cluster-in-a-box (kube_cluster, kube_namespace) lives in tests/kube.
pytest.importorskip("kube.fixtures", reason="tests/kube (the cluster-in-a-box) is not here")

WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
STARTUP_TIMEOUT = 60
SETTLE_TIMEOUT = 60




def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 that is its own CA (the caBundle of the webhook)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ray-pixi-webhook")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class Operator:
    """One `ray-pixi-operator run` subprocess, its webhook registered for one namespace."""

    def __init__(self, cluster: Any, namespace: str, workdir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.rest = cluster.rest()
        self.cert_file, self.key_file = _self_signed(workdir)
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.log_file = workdir / "operator.log"
        self.webhook_name = f"ray-pixi-{namespace}"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            "RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE,
            "RAY_PIXI_WEBHOOK_PORT": str(self.webhook_port),
            "RAY_PIXI_WEBHOOK_CERT_FILE": str(self.cert_file),
            "RAY_PIXI_WEBHOOK_KEY_FILE": str(self.key_file),
            "RAY_PIXI_NAMESPACES": namespace,
            "RAY_PIXI_HEALTH_PORT": str(self.health_port),
            "RAY_PIXI_LOG_LEVEL": "DEBUG",
            # Stopped by the fixture between tests: no drain to wait for.
            "RAY_PIXI_WEBHOOK_DRAIN_SECONDS": "0",
        }
        self.settings = Settings.from_env(self.env)

    # The MutatingWebhookConfiguration, as the chart would install it.
    def register_webhook(self, failure_policy: str) -> None:
        self.rest.create(
            WEBHOOKS,
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": self.webhook_name},
                "webhooks": [
                    {
                        "name": "inject-raycluster.ray-pixi.io",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": failure_policy,
                        "timeoutSeconds": 10,
                        "reinvocationPolicy": "IfNeeded",
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{self.webhook_port}{names.WEBHOOK_PATH}",
                            "caBundle": base64.b64encode(self.cert_file.read_bytes()).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": ["ray.io"],
                                "apiVersions": ["v1"],
                                "resources": ["rayclusters"],
                                "operations": ["CREATE", "UPDATE"],
                                "scope": "Namespaced",
                            }
                        ],
                        "objectSelector": {
                            "matchLabels": {names.ENABLED_LABEL: names.ENABLED_VALUE}
                        },
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": self.namespace}
                        },
                    }
                ],
            },
        )

    def start(self) -> None:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ray_pixi_operator.cli", "run"],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": os.environ.get("HOME", "/root"),
                "KUBECONFIG": str(self.cluster.admin_kubeconfig),
                **self.env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        poll(
            self._healthy,
            timeout=STARTUP_TIMEOUT,
            what="the operator's health endpoint",
            describe=self.tail,
        )

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {self.process.returncode}:\n{self.tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def wait_for_webhook(self) -> None:
        """Until a dry-run create comes back injected: the API server now calls the webhook."""
        probe = load_manifest("raycluster-head-only")
        probe["metadata"] = {
            "name": "webhook-probe",
            "labels": {names.ENABLED_LABEL: names.ENABLED_VALUE},
        }
        path = self.cluster.path_for("ray.io/v1", "RayCluster", self.namespace)

        def injected() -> bool:
            from kube.rest import ApiError

            # kopf answers /healthz before its webhook server listens: refused until then.
            try:
                answer = self.rest.request("POST", path, probe, params={"dryRun": "All"})
            except ApiError:
                return False
            init = answer["spec"]["headGroupSpec"]["template"]["spec"].get("initContainers", [])
            return any(c["name"] == names.INIT_CONTAINER_NAME for c in init)

        poll(
            injected,
            timeout=STARTUP_TIMEOUT,
            what="the webhook to inject a dry-run RayCluster",
            describe=self.tail,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.rest.delete(f"{WEBHOOKS}/{self.webhook_name}", missing_ok=True)

    def tail(self, lines: int = 60) -> str:
        if not self.log_file.exists():
            return "(no operator log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def operator(kube_cluster: Any, kube_namespace: str, tmp_path: Path) -> Iterator[Operator]:
    handle = Operator(kube_cluster, kube_namespace, tmp_path)
    try:
        yield handle
    finally:
        handle.stop()


# --- Helpers over the API ---


def raycluster(name: str, *, labelled: bool) -> dict[str, Any]:
    """The realistic two-worker-group cluster of the unit tests, with its pods kept cheap."""
    body = load_manifest("raycluster-workers")
    body["metadata"] = {
        "name": name,
        "labels": {names.ENABLED_LABEL: names.ENABLED_VALUE} if labelled else {},
    }
    del body["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    for group in body["spec"]["workerGroupSpecs"]:
        group["replicas"] = 1
    return body


def pods_of(operator: Operator, cluster: str) -> list[dict[str, Any]]:
    answer = operator.rest.get(
        f"/api/v1/namespaces/{operator.namespace}/pods",
        labelSelector=f"{names.CLUSTER_LABEL}={cluster}",
    )
    return sorted(
        answer["items"],
        key=lambda pod: (
            pod["metadata"]["labels"].get(names.NODE_TYPE_LABEL) != "head",
            pod["metadata"]["name"],
        ),
    )


def wait_for_pods(operator: Operator, cluster: str, count: int) -> list[dict[str, Any]]:
    return poll(
        lambda: (pods := pods_of(operator, cluster)) and len(pods) >= count and pods,
        timeout=SETTLE_TIMEOUT,
        what=f"KubeRay to build {count} pods of {cluster}",
    )


def stored(operator: Operator, kind: str, name: str) -> dict[str, Any]:
    return dict(
        operator.rest.get(operator.cluster.path_for("ray.io/v1", kind, operator.namespace, name))
    )


def events_for(operator: Operator, name: str, reason: str) -> list[dict[str, Any]]:
    answer = operator.rest.get(f"/api/v1/namespaces/{operator.namespace}/events")
    return [
        event
        for event in answer["items"]
        if event["involvedObject"].get("name") == name and event.get("reason") == reason
    ]


def wait_for_event(operator: Operator, name: str, reason: str) -> dict[str, Any]:
    return poll(
        lambda: (found := events_for(operator, name, reason)) and found[0],
        timeout=SETTLE_TIMEOUT,
        what=f"a {reason} event for {name}",
        describe=operator.tail,
    )


def wait_for_status(operator: Operator, name: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = stored(operator, "RayCluster", name)
        annotations = body["metadata"].get("annotations") or {}
        return body if annotations.get(names.STATUS_ANNOTATION) == status else None

    return poll(
        check,
        timeout=SETTLE_TIMEOUT,
        what=f"{name} to carry {names.STATUS_ANNOTATION}={status}",
        describe=operator.tail,
    )


def templates(body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = body["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


# --- Tests ---


def test_labelled_cluster_is_injected_before_kuberay_builds_pods_and_unlabelled_is_not(operator):
    operator.start()
    operator.register_webhook("Fail")
    operator.wait_for_webhook()

    plain = raycluster("plain", labelled=False)
    operator.cluster.apply(copy.deepcopy(plain), operator.namespace)
    labelled = raycluster("pixi", labelled=True)
    operator.cluster.apply(copy.deepcopy(labelled), operator.namespace)

    # The stored pod templates are exactly the pure mutation of what was submitted (the API
    # server adds CRD defaults such as numOfHosts elsewhere in the spec).
    expected = prepare(
        {**labelled, "apiVersion": "ray.io/v1", "kind": "RayCluster"}, operator.settings
    ).body
    assert templates(stored(operator, "RayCluster", "pixi")) == templates(expected)
    assert templates(stored(operator, "RayCluster", "plain")) == templates(plain)

    # Every pod KubeRay built (head, cpu worker, gpu worker) carries the injection; the payload
    # init container runs after the user's and before KubeRay's wait-gcs-ready.
    head, *workers = wait_for_pods(operator, "pixi", 3)
    assert [c["name"] for c in head["spec"].get("initContainers", [])] == ["ray-pixi-payload"]
    inits = {
        w["metadata"]["labels"][names.GROUP_LABEL]: [c["name"] for c in w["spec"]["initContainers"]]
        for w in workers
    }
    assert inits == {
        "cpu": ["fetch-data", "ray-pixi-payload", "wait-gcs-ready"],
        "gpu": ["ray-pixi-payload", "wait-gcs-ready"],
    }
    for pod in (head, *workers):
        ray = pod["spec"]["containers"][0]
        env = env_of(ray)
        assert '"ray_pixi.PixiPlugin"' in env["RAY_RUNTIME_ENV_PLUGINS"]
        payload = names.payload_dir(operator.settings.payload_image)
        assert env["RAY_PIXI_EXE"] == f"{payload}/{names.PAYLOAD_PIXI_LAUNCHER}"
        # The payload reaches the agent through the user site; the image's PYTHONPATH stays.
        assert env["PYTHONUSERBASE"] == payload
        assert payload not in env.get("PYTHONPATH", "")
        assert {"name": "ray-pixi", "mountPath": "/ray-pixi"} in [
            {k: m[k] for k in ("name", "mountPath")} for m in ray["volumeMounts"]
        ]
        assert "ray-pixi" in [v["name"] for v in pod["spec"]["volumes"]]
    assert "RAY_PIXI_EXE" not in env_of(head["spec"]["containers"][1])  # the sidecar

    plain_head, *_ = wait_for_pods(operator, "plain", 1)
    assert "ray-pixi-payload" not in str(plain_head["spec"].get("initContainers"))

    # The reconciler confirms, as an event and a status annotation; unlabelled is not its business.
    event = wait_for_event(operator, "pixi", "RayPixiInjected")
    assert event["type"] == "Normal"
    body = wait_for_status(operator, "pixi", names.STATUS_INJECTED)
    # The injection record is on the cluster's metadata, outside the spec KubeRay hashes.
    assert names.INJECTION_ANNOTATION in body["metadata"]["annotations"]
    # No finalizer and no kopf bookkeeping: deleting a cluster never waits for the add-on.
    assert not body["metadata"].get("finalizers")
    assert not [key for key in body["metadata"]["annotations"] if "kopf" in key]
    assert names.STATUS_ANNOTATION not in (
        stored(operator, "RayCluster", "plain")["metadata"].get("annotations") or {}
    )


def test_bad_annotation_is_refused_by_the_api_server_with_the_reason(operator):
    from kube.rest import ApiError

    operator.start()
    operator.register_webhook("Fail")
    operator.wait_for_webhook()
    body = raycluster("bad", labelled=True)
    body["metadata"]["annotations"] = {names.CACHE_VOLUME_ANNOTATION: "nfs"}
    with pytest.raises(ApiError) as error:
        operator.cluster.apply(body, operator.namespace)
    assert error.value.status == 422
    message = error.value.body["message"]
    assert message.startswith(
        'admission webhook "inject-raycluster.ray-pixi.io" denied the request'
    )
    assert (
        "ray-pixi: metadata.annotations['ray-pixi.io/cache-volume'] must be one of emptyDir, "
        "hostPath, persistentVolumeClaim, got 'nfs': fix or remove the annotation"
    ) in message


def test_labelled_rayjob_gets_an_injected_cluster(operator):
    operator.start()
    operator.register_webhook("Fail")
    operator.wait_for_webhook()
    job = load_manifest("rayjob")
    job["metadata"].pop("namespace")
    operator.cluster.apply(job, operator.namespace)

    def generated() -> dict[str, Any] | None:
        path = operator.cluster.path_for("ray.io/v1", "RayCluster", operator.namespace)
        items = operator.rest.get(path, labelSelector="ray.io/originated-from-cr-name=nightly-etl")[
            "items"
        ]
        return items[0] if items else None

    cluster = poll(
        generated, timeout=SETTLE_TIMEOUT, what="KubeRay to create the RayJob's RayCluster"
    )
    head_env = env_of(cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0])
    assert head_env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == "25"  # the RayJob's annotation
    head, *_ = wait_for_pods(operator, cluster["metadata"]["name"], 1)
    assert [c["name"] for c in head["spec"]["initContainers"]] == ["ray-pixi-payload"]


def test_cluster_created_while_the_webhook_was_down_is_reported_not_rebuilt(operator):
    # failurePolicy Ignore and no operator: the API server stores the cluster as submitted.
    operator.register_webhook("Ignore")
    operator.cluster.apply(raycluster("missed", labelled=True), operator.namespace)
    before = stored(operator, "RayCluster", "missed")
    assert "initContainers" not in before["spec"]["headGroupSpec"]["template"]["spec"]
    wait_for_pods(operator, "missed", 3)

    operator.start()
    warning = wait_for_event(operator, "missed", "RayPixiNotInjected")
    assert warning["type"] == "Warning"
    assert "webhook was unreachable" in warning["message"]
    assert "ray-pixi.io/migrate" in warning["message"]
    # The status annotation went through the webhook (this configuration has no CEL filter),
    # which left the templates alone: a running cluster is only prepared on request.
    body = wait_for_status(operator, "missed", names.STATUS_NOT_INJECTED)
    assert templates(body) == templates(before)
    assert names.INJECTION_ANNOTATION not in body["metadata"]["annotations"]
