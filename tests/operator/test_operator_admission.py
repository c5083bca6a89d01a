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
from ray_pixi_operator.handlers import MEMO_KEY

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


def test_update_reapplies_after_the_spec_was_replaced(manifest, settings):
    """A RayService may replace the whole spec of its RayCluster with an UPDATE."""
    injected = prepare(manifest("raycluster-workers"), settings).body
    replaced = copy.deepcopy(injected)
    replaced["spec"] = manifest("raycluster-autoscaler")["spec"]
    review = admission_review("UPDATE", replaced, old=injected)
    (response,) = send(settings, review)
    result = patched(review, response)
    validate(result)
    assert result == prepare(replaced, settings).body


def test_update_of_an_injected_cluster_returns_no_patch(manifest, settings):
    injected = prepare(manifest("raycluster-workers"), settings).body
    relabelled = copy.deepcopy(injected)
    relabelled["metadata"]["labels"]["team"] = "vision"
    review = admission_review("UPDATE", relabelled, old=injected)
    (response,) = send(settings, review)
    assert response["response"]["allowed"] is True
    assert "patch" not in response["response"]


def test_update_after_a_new_payload_image_moves_the_init_container_to_it(manifest, make_settings):
    injected = prepare(manifest("raycluster-head-only"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    review = admission_review("UPDATE", injected, old=injected)
    (response,) = send(newer, review)
    result = patched(review, response)
    init = result["spec"]["headGroupSpec"]["template"]["spec"]["initContainers"]
    assert [c["image"] for c in init] == ["ghcr.io/example/ray-pixi:0.2.0"]


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
