"""Real AdmissionReview requests through kopf's webhook server and the add-on's handler.

kopf's own ``WebhookServer`` runs in-process (plain HTTP on loopback) with the handlers that
``ray-pixi-operator run`` registers; requests go to the path the chart's
MutatingWebhookConfiguration uses. Each returned JSONPatch is applied to the request's object
with a real JSONPatch implementation and the result checked against the CRD schema.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from typing import Any

import aiohttp
import jsonpatch
import kopf
import pytest
from crd_schema import validate
from operator_support import PAYLOAD_IMAGE
from ray_pixi_operator import Settings, names, prepare
from ray_pixi_operator.scope import MEMO_KEY

from support import kopf_admission_handler


def admission_review(
    operation: str, obj: dict[str, Any], old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview as kube-apiserver sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "ray.io", "version": "v1", "kind": "RayCluster"},
            "resource": {"group": "ray.io", "version": "v1", "resource": "rayclusters"},
            "requestKind": {"group": "ray.io", "version": "v1", "kind": "RayCluster"},
            "requestResource": {"group": "ray.io", "version": "v1", "resource": "rayclusters"},
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"].get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "alice@example.com", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
        },
    }


def send(
    settings: Settings, *reviews: dict[str, Any], path: str = names.WEBHOOK_PATH
) -> list[dict[str, Any]]:
    """POST each review to a live kopf WebhookServer that serves the add-on's handlers."""

    async def run() -> list[dict[str, Any]]:
        webhookfn = kopf_admission_handler(settings)
        server = kopf.WebhookServer(addr="127.0.0.1", insecure=True)
        configs = server(webhookfn)
        client_config = await configs.__anext__()
        base = client_config["url"].rstrip("/")
        try:
            async with aiohttp.ClientSession() as session:
                responses = []
                for review in reviews:
                    async with session.post(base + path, json=review) as reply:
                        assert reply.status == 200, await reply.text()
                        responses.append(await reply.json())
                return responses
        finally:
            await configs.aclose()

    return asyncio.run(asyncio.wait_for(run(), timeout=30))


def patched(review: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Apply the response's JSONPatch to the request's object, as kube-apiserver does."""
    result = response["response"]
    assert result["uid"] == review["request"]["uid"]
    assert result["allowed"] is True, result.get("status")
    if "patch" not in result:
        return review["request"]["object"]
    assert result["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(result["patch"]))
    return jsonpatch.apply_patch(review["request"]["object"], ops)


def test_create_of_a_labelled_cluster_is_injected(manifest, settings):
    cluster = manifest("raycluster-workers")
    review = admission_review("CREATE", cluster)
    (response,) = send(settings, review)
    result = patched(review, response)
    validate(result)
    assert result == prepare(cluster, settings).body
    assert "warnings" not in response["response"]


def test_update_that_replaced_the_spec_gets_the_recorded_injection_back(manifest, settings):
    """A RayService replaces the whole spec and the annotations of its RayCluster."""
    injected = prepare(manifest("raycluster-workers"), settings).body
    replaced = copy.deepcopy(injected)
    replaced["spec"] = manifest("raycluster-workers")["spec"]
    replaced["metadata"]["annotations"] = {"ray.io/kuberay-version": "v1.6.2"}
    review = admission_review("UPDATE", replaced, old=injected)
    (response,) = send(settings, review)
    result = patched(review, response)
    validate(result)
    assert result["spec"] == injected["spec"]
    assert result["metadata"]["annotations"][names.INJECTION_ANNOTATION] == (
        injected["metadata"]["annotations"][names.INJECTION_ANNOTATION]
    )


def test_update_of_an_injected_cluster_returns_no_patch(manifest, settings):
    injected = prepare(manifest("raycluster-workers"), settings).body
    relabelled = copy.deepcopy(injected)
    relabelled["metadata"]["labels"]["team"] = "vision"
    review = admission_review("UPDATE", relabelled, old=injected)
    (response,) = send(settings, review)
    assert response["response"]["allowed"] is True
    assert "patch" not in response["response"]


def test_update_after_a_settings_change_keeps_the_recorded_payload(manifest, make_settings):
    """An operator upgrade never moves a prepared cluster: its pods would be rebuilt."""
    injected = prepare(manifest("raycluster-head-only"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    edited = copy.deepcopy(injected)
    edited["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "TEAM", "value": "vision"}
    )
    review = admission_review("UPDATE", edited, old=injected)
    (response,) = send(newer, review)
    assert "patch" not in response["response"]
    assert "warnings" not in response["response"]


def test_the_migrate_annotation_moves_the_cluster_to_the_current_payload(manifest, make_settings):
    injected = prepare(manifest("raycluster-head-only"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    asked = copy.deepcopy(injected)
    asked["metadata"]["annotations"]["ray-pixi.io/migrate"] = "2025-06-01T00:00:00Z"
    review = admission_review("UPDATE", asked, old=injected)
    (response,) = send(newer, review)
    result = patched(review, response)
    init = result["spec"]["headGroupSpec"]["template"]["spec"]["initContainers"]
    assert [c["image"] for c in init] == ["ghcr.io/example/ray-pixi:0.2.0"]
    record = json.loads(result["metadata"]["annotations"][names.INJECTION_ANNOTATION])
    assert record["migration"] == "2025-06-01T00:00:00Z"


def _invalid_under_hostpath(manifest, make_settings):
    """A cluster prepared with a size limit, and settings under which that annotation is bad."""
    body = manifest("raycluster-workers")
    body["metadata"]["annotations"] = {"ray-pixi.io/cache-size-limit": "10Gi"}
    return prepare(body, make_settings()).body, make_settings(cache_volume="hostPath")


def test_updates_that_touch_no_template_pass_even_when_the_cluster_became_invalid(
    manifest, make_settings
):
    """A replica patch, a finalizer removal on a deleting cluster: never refused, never patched
    (the chart's matchConditions keep them from the webhook; this is older servers' path)."""
    injected, hostpath = _invalid_under_hostpath(manifest, make_settings)
    scaled = copy.deepcopy(injected)
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = 7
    deleting_old = copy.deepcopy(injected)
    deleting_old["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    deleting_old["metadata"]["finalizers"] = ["ray.io/gcs-ft-redis-cleanup-finalizer"]
    finalized = copy.deepcopy(deleting_old)
    finalized["metadata"]["finalizers"] = []
    # Even a template change is waved through on an object being deleted.
    finalized["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = []
    responses = send(
        hostpath,
        admission_review("UPDATE", scaled, old=injected),
        admission_review("UPDATE", finalized, old=deleting_old),
    )
    for response in responses:
        assert response["response"]["allowed"] is True
        assert "patch" not in response["response"]


def test_a_template_update_of_an_already_invalid_cluster_is_admitted_with_a_warning(
    manifest, make_settings
):
    injected, hostpath = _invalid_under_hostpath(manifest, make_settings)
    edited = copy.deepcopy(injected)
    edited["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "x:2"
    (response,) = send(hostpath, admission_review("UPDATE", edited, old=injected))
    assert response["response"]["allowed"] is True
    (warning,) = response["response"]["warnings"]
    assert "ray-pixi.io/cache-size-limit" in warning and "ignored until" in warning


def test_an_update_that_makes_a_valid_cluster_invalid_is_refused(manifest, settings):
    injected = prepare(manifest("raycluster-head-only"), settings).body
    typo = copy.deepcopy(injected)
    typo["metadata"]["annotations"]["ray-pixi.io/cache-volum"] = "hostPath"
    (response,) = send(settings, admission_review("UPDATE", typo, old=injected))
    assert response["response"]["allowed"] is False
    assert "unknown ray-pixi annotation 'ray-pixi.io/cache-volum'" in (
        response["response"]["status"]["message"]
    )


def test_create_of_a_cluster_running_an_old_ray_is_refused_with_the_range(manifest, settings):
    cluster = manifest("raycluster-head-only")
    cluster["spec"]["rayVersion"] = "2.9.0"
    (response,) = send(settings, admission_review("CREATE", cluster))
    result = response["response"]
    assert result["allowed"] is False
    assert "spec.rayVersion is '2.9.0'" in result["status"]["message"]
    assert "Ray >= 2.10, Python >= 3.10, pydantic >= 2.5" in result["status"]["message"]


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_unlabelled_cluster_is_admitted_untouched(operation, manifest, settings):
    """The chart's objectSelector keeps these away; the handler's own label filter holds too."""
    cluster = manifest("raycluster-workers")
    cluster["metadata"]["labels"] = {"team": "vision"}
    review = admission_review(operation, cluster, old=cluster if operation == "UPDATE" else None)
    (response,) = send(settings, review)
    assert response["response"]["allowed"] is True
    assert "patch" not in response["response"]


def test_bad_annotation_is_rejected_with_an_actionable_message(manifest, settings):
    cluster = manifest("raycluster-head-only")
    cluster["metadata"]["annotations"] = {"ray-pixi.io/cache-volume": "nfs"}
    (response,) = send(settings, admission_review("CREATE", cluster))
    result = response["response"]
    assert result["allowed"] is False
    assert result["status"]["code"] == 422
    assert result["status"]["message"] == (
        "ray-pixi: metadata.annotations['ray-pixi.io/cache-volume'] must be one of emptyDir, "
        "hostPath, persistentVolumeClaim, got 'nfs': fix or remove the annotation"
    )
    assert "patch" not in result


def test_non_list_ray_runtime_env_plugins_is_rejected(manifest, settings):
    cluster = manifest("raycluster-head-only")
    ray = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["env"] = [{"name": "RAY_RUNTIME_ENV_PLUGINS", "value": '{"class": "acme.X"}'}]
    (response,) = send(settings, admission_review("CREATE", cluster))
    assert response["response"]["allowed"] is False
    assert (
        "RAY_RUNTIME_ENV_PLUGINS] must be a JSON list" in response["response"]["status"]["message"]
    )


def test_kept_user_value_comes_back_as_an_admission_warning(manifest, settings):
    cluster = manifest("raycluster-head-only")
    ray = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["env"] = [{"name": "PIXI_CACHE_DIR", "value": "/mnt/cache"}]
    review = admission_review("CREATE", cluster)
    (response,) = send(settings, review)
    (warning,) = response["response"]["warnings"]
    assert warning.startswith(
        "ray-pixi: spec.headGroupSpec.template.spec.containers[0].env[PIXI_CACHE_DIR]"
    )
    result = patched(review, response)
    env = {
        e["name"]: e["value"]
        for e in result["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PIXI_CACHE_DIR"] == "/mnt/cache"


def test_clusters_outside_the_configured_namespaces_are_untouched(manifest, make_settings):
    cluster = manifest("raycluster-head-only")  # namespace "ml"
    (response,) = send(make_settings(namespaces="serving"), admission_review("CREATE", cluster))
    assert "patch" not in response["response"]


def test_the_documented_path_is_the_one_that_mutates(manifest, settings):
    """kopf routes by handler id: a wrong path in the webhook configuration mutates nothing."""
    cluster = manifest("raycluster-head-only")
    right, wrong = admission_review("CREATE", cluster), admission_review("CREATE", cluster)
    (served,) = send(settings, right, path="/inject-raycluster")
    (ignored,) = send(settings, wrong, path="/mutate")
    assert "patch" in served["response"]
    assert "patch" not in ignored["response"]
    assert PAYLOAD_IMAGE in json.dumps(patched(right, served))


def configure_from_env(monkeypatch, tmp_path, **env: str):
    """Run the operator's kopf startup hook with only these RAY_PIXI_* variables set."""
    from ray_pixi_operator.handlers import configure

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE,
                        "RAY_PIXI_WEBHOOK_CERT_FILE": str(cert),
                        "RAY_PIXI_WEBHOOK_KEY_FILE": str(key), **env}.items():
        monkeypatch.setenv(name, value)
    operator_settings, memo = kopf.OperatorSettings(), kopf.Memo()
    configure(settings=operator_settings, memo=memo)
    return operator_settings, memo, cert, key


def test_startup_configures_kopfs_webhook_server_from_the_env(monkeypatch, tmp_path):
    """What `kopf run -m ray_pixi_operator.handlers` gets: the same settings, from env vars."""
    operator_settings, memo, cert, key = configure_from_env(
        monkeypatch, tmp_path, RAY_PIXI_WEBHOOK_PORT="8443")
    server = operator_settings.admission.server
    assert isinstance(server, kopf.WebhookServer)
    assert (server.port, server.certfile, server.pkeyfile) == (8443, cert, key)
    assert operator_settings.admission.managed is None  # the chart owns the configuration
    assert memo[MEMO_KEY].payload_image == PAYLOAD_IMAGE


@pytest.mark.parametrize(("namespaces", "scanning_disabled"), [("", False), ("ml,serving", True)])
def test_namespaced_mode_never_scans_cluster_wide(monkeypatch, tmp_path, namespaces,
                                                  scanning_disabled):
    """The chart's namespaced mode grants Roles only; cluster-wide scans would be Forbidden."""
    operator_settings, *_ = configure_from_env(monkeypatch, tmp_path,
                                               RAY_PIXI_NAMESPACES=namespaces)
    assert operator_settings.scanning.disabled is scanning_disabled
