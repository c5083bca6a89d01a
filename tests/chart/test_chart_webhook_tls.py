"""Webhook TLS: the generated certificate, its stability across upgrades and its rotation, the
cert-manager CA chain, a brought-along Secret, and the `helm test` hook answered by the
operator's real webhook server over that TLS.

Offline rendering has no cluster, so Helm's `lookup` finds nothing there. The upgrade tests
render a copy of the chart whose two `lookup` calls (the helpers
`ray-pixi.existingWebhookTLSSecret` and `ray-pixi.existingWebhookConfiguration`) return the
objects of an earlier render, exactly what `lookup` returns on `helm upgrade` against a cluster;
tests/chart/test_chart_install.py does the same against a real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import helm_python
import pytest
from chart_render import (
    CHART_DIR,
    NAMESPACE,
    VARIANTS,
    objects_of,
    of_kind,
    one,
    render,
    render_raw,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding

from support import free_port

LOOKUP_SECRET = (
    '{{- lookup "v1" "Secret" .Release.Namespace '
    '(include "ray-pixi.webhookTLSSecretName" .) | toJson -}}'
)
LOOKUP_WEBHOOKS = (
    '{{- lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" '
    '(include "ray-pixi.fullname" .) | toJson -}}'
)


def _pem(b64: str) -> bytes:
    return base64.b64decode(b64)


def _tls(objects: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    """The generated Secret's data and the caBundle (the same in both webhooks)."""
    secret = one(objects, "Secret")
    bundles = {
        webhook["clientConfig"]["caBundle"]
        for webhook in one(objects, "MutatingWebhookConfiguration")["webhooks"]
    }
    (bundle,) = bundles
    return secret["data"], bundle


def _unmarked(obj: dict[str, Any]) -> dict[str, Any]:
    """An object of a render as the cluster stores it (without the test's template mark)."""
    obj = copy.deepcopy(obj)
    obj["metadata"]["annotations"].pop("x-template", None)
    return obj


def chart_with_lookups(
    tmp_path: Path,
    secret: dict[str, Any] | None,
    webhooks: dict[str, Any] | None = None,
) -> helm_python.Chart:
    """A copy of the chart whose `lookup`s of the TLS Secret and of the webhook configuration
    return these objects (None: nothing), as on `helm upgrade` of a live release."""
    copy_dir = tmp_path / f"ray-pixi-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(CHART_DIR, copy_dir)
    helpers = copy_dir / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    for call, found in ((LOOKUP_SECRET, secret), (LOOKUP_WEBHOOKS, webhooks)):
        assert text.count(call) == 1, f"the chart's lookup moved: {call}"
        literal = json.dumps(_unmarked(found)) if found else "{}"
        assert "`" not in literal
        text = text.replace(call, "{{- `" + literal + "` -}}")
    helpers.write_text(text)
    return helm_python.Chart.load(copy_dir)


def _certificates(bundle_b64: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(_pem(bundle_b64))


def _verifies(cert_pem: bytes, bundle_b64: str) -> bool:
    """Whether a client trusting ``bundle`` accepts the serving certificate ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    for ca in _certificates(bundle_b64):
        if ca.subject != cert.issuer:
            continue
        try:
            ca.public_key().verify(  # type: ignore[union-attr, call-arg]
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
        except Exception:  # noqa: BLE001 -- another CA of the same name
            continue
        return True
    return False


# --- the generated certificate ---------------------------------------------------------------


def test_generated_certificate_serves_the_webhook_service():
    objects = render()
    data, ca_bundle = _tls(objects)
    assert ca_bundle == data["ca.crt"]
    ca = x509.load_pem_x509_certificate(_pem(data["ca.crt"]))
    cert = x509.load_pem_x509_certificate(_pem(data["tls.crt"]))
    key = serialization.load_pem_private_key(_pem(data["tls.key"]), password=None)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.issuer == ca.subject
    ca.public_key().verify(  # type: ignore[union-attr, call-arg]
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),
        cert.signature_hash_algorithm,
    )
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    service = one(objects, "Service")["metadata"]["name"]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime <= datetime.timedelta(days=3651)


def test_generated_certificate_is_kept_on_upgrade(tmp_path):
    installed = objects_of(render_raw())
    secret = one(installed, "Secret")
    webhooks = one(installed, "MutatingWebhookConfiguration")
    chart = chart_with_lookups(tmp_path, secret, webhooks)
    upgraded = objects_of(render_raw({"logLevel": "DEBUG"}, chart_obj=chart, upgrade=True))
    assert _tls(upgraded) == _tls(installed)
    assert _tls(upgraded)[1] == secret["data"]["ca.crt"]


def test_incomplete_secret_is_replaced_with_a_new_pair(tmp_path):
    installed = objects_of(render_raw())
    secret = one(installed, "Secret")
    del secret["data"]["ca.crt"]
    chart = chart_with_lookups(tmp_path, secret)
    data, ca_bundle = _tls(objects_of(render_raw(chart_obj=chart, upgrade=True)))
    assert data["tls.crt"] != secret["data"]["tls.crt"]
    assert ca_bundle == data["ca.crt"]


def test_rotation_trusts_the_previous_ca_until_the_webhook_serves_the_new_pair(tmp_path):
    """Delete the Secret and upgrade: a new CA and pair, and a caBundle that still trusts the
    certificate the running webhook serves until it loads the new one: no refused request."""
    installed = objects_of(render_raw())
    old_data, _ = _tls(installed)
    webhooks = one(installed, "MutatingWebhookConfiguration")
    rotated = objects_of(
        render_raw(chart_obj=chart_with_lookups(tmp_path, None, webhooks), upgrade=True)
    )
    new_data, bundle = _tls(rotated)
    assert new_data["tls.crt"] != old_data["tls.crt"] and new_data["ca.crt"] != old_data["ca.crt"]
    assert [c.subject for c in _certificates(bundle)] == [
        x509.load_pem_x509_certificate(_pem(new_data["ca.crt"])).subject,
        x509.load_pem_x509_certificate(_pem(old_data["ca.crt"])).subject,
    ]
    assert _verifies(_pem(old_data["tls.crt"]), bundle)  # what the webhook still serves
    assert _verifies(_pem(new_data["tls.crt"]), bundle)  # what it loads next
    assert not _verifies(_pem(old_data["tls.crt"]), new_data["ca.crt"])  # the check can fail
    # A later upgrade keeps that bundle and that pair as they are.
    again = objects_of(
        render_raw(
            chart_obj=chart_with_lookups(
                tmp_path, one(rotated, "Secret"), one(rotated, "MutatingWebhookConfiguration")
            ),
            upgrade=True,
        )
    )
    assert _tls(again) == (new_data, bundle)


def test_each_offline_render_carries_a_fresh_consistent_pair():
    """What `helm template` does (no cluster for `lookup`): new pair, matching caBundle."""
    first, second = objects_of(render_raw()), objects_of(render_raw())
    assert _tls(first)[0]["tls.crt"] != _tls(second)[0]["tls.crt"]
    for objects in (first, second):
        data, ca_bundle = _tls(objects)
        assert ca_bundle == data["ca.crt"]


# --- cert-manager ----------------------------------------------------------------------------


def _ref(obj: dict[str, Any]) -> dict[str, str]:
    return {"name": obj["metadata"]["name"], "kind": obj["kind"], "group": "cert-manager.io"}


def test_cert_manager_issues_the_serving_certificate_from_a_ca_that_keeps_its_key():
    """A self-signed Issuer makes the CA, a CA Issuer signs the serving certificate with it."""
    objects = render(VARIANTS["cert-manager"])
    assert of_kind(objects, "Secret") == []
    config = one(objects, "MutatingWebhookConfiguration")
    for webhook in config["webhooks"]:
        assert "caBundle" not in webhook["clientConfig"]
    issuers = {i["metadata"]["name"]: i for i in of_kind(objects, "Issuer")}
    (ca_cert,) = [c for c in of_kind(objects, "Certificate") if c["spec"].get("isCA")]
    (serving,) = [c for c in of_kind(objects, "Certificate") if not c["spec"].get("isCA")]
    # The chain: selfSigned Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    (self_signed,) = [i for i in issuers.values() if "selfSigned" in i["spec"]]
    (ca_issuer,) = [i for i in issuers.values() if "ca" in i["spec"]]
    assert ca_cert["spec"]["issuerRef"] == _ref(self_signed)
    assert ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
    assert serving["spec"]["issuerRef"] == _ref(ca_issuer)
    # Renewing the CA re-signs its key, so certificates from before stay trusted.
    assert ca_cert["spec"]["privateKey"]["rotationPolicy"] == "Never"
    assert serving["spec"]["privateKey"]["rotationPolicy"] == "Always"
    assert ca_cert["spec"]["secretName"] != serving["spec"]["secretName"]
    # The injector copies the serving Secret's ca.crt, i.e. the CA, into the caBundle.
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{serving['metadata']['name']}"
    )
    service = one(objects, "Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]


def test_a_brought_along_secret_is_served_and_trusted_through_the_given_bundle():
    values = VARIANTS["bring-your-own-tls"]
    objects = render(values)
    assert of_kind(objects, "Secret") == [] and of_kind(objects, "Certificate") == []
    for webhook in one(objects, "MutatingWebhookConfiguration")["webhooks"]:
        assert webhook["clientConfig"]["caBundle"] == values["webhook"]["tls"]["caBundle"]
    (pod,) = of_kind(objects, "Pod")  # helm test trusts the same bundle
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WEBHOOK_CA_BUNDLE"] == values["webhook"]["tls"]["caBundle"]


@pytest.mark.parametrize(
    ("tls", "complaint"),
    [
        ({"existingSecret": "corp-tls"}, "webhook.tls.caBundle is required"),
        ({"caBundle": "QUJD"}, "caBundle applies only with webhook.tls.existingSecret"),
        (
            {"existingSecret": "corp-tls", "caBundle": "QUJD", "certManager": {"enabled": True}},
            "either certManager.enabled or existingSecret",
        ),
    ],
)
def test_tls_values_that_do_not_fit_together_fail_the_render(tls, complaint):
    with pytest.raises(helm_python.HelmRenderError, match=complaint):
        render_raw({"webhook": {"tls": tls}})


def test_cert_manager_with_a_cluster_issuer():
    objects = render(VARIANTS["cert-manager-cluster-issuer"])
    assert of_kind(objects, "Issuer") == []
    assert [c for c in of_kind(objects, "Certificate") if c["spec"].get("isCA")] == []
    spec = one(objects, "Certificate")["spec"]
    assert spec["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert spec["duration"] == "2160h"


# --- `helm test` against the operator's webhook server ----------------------------------------


@contextlib.contextmanager
def running_webhook(cert_file: Path, key_file: Path, port: int):  # type: ignore[no-untyped-def]
    """kopf's WebhookServer with the add-on's handlers, over TLS with the chart's certificate."""
    import kopf
    from ray_pixi_operator.settings import Settings

    from support import kopf_admission_handler

    settings = Settings.from_env({"RAY_PIXI_PAYLOAD_IMAGE": "ghcr.io/example/ray-pixi:0.1.0"})
    ready, stop = threading.Event(), None
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        webhookfn = kopf_admission_handler(settings)
        server = kopf.WebhookServer(
            addr="127.0.0.1", port=port, host="localhost", certfile=cert_file, pkeyfile=key_file
        )
        configs = server(webhookfn)
        await configs.__anext__()
        ready.set()
        try:
            await stop.wait()
        finally:
            await configs.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "kopf's webhook server did not start"
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(10)


def _run_hook(tmp_path: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """The hook's script, run as in its pod, against the operator's webhook server over TLS
    with the chart's certificate (on another URL path when `path` is given)."""
    objects = render()
    data, _ = _tls(objects)
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(_pem(data[key]))
    (pod,) = of_kind(objects, "Pod")
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python3", "-c"]
    (script,) = container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["webhook-tls"]
    assert script.count(mount + "/ca.crt") == 1
    script = script.replace(mount + "/ca.crt", str(tmp_path / "ca.crt"))
    port = free_port()
    url = re.sub(r":443/", f":{port}/", env["WEBHOOK_URL"])
    if path is not None:
        url = url.rsplit("/", 1)[0] + path
    service_host = url.split("/")[2].split(":")[0]
    # The pod resolves the Service name through cluster DNS; here it resolves to loopback.
    resolver = (
        "import socket\n"
        "_real = socket.getaddrinfo\n"
        f"socket.getaddrinfo = lambda host, *a, **k: _real('127.0.0.1' if host == {service_host!r} "
        "else host, *a, **k)\n"
    )
    with running_webhook(tmp_path / "tls.crt", tmp_path / "tls.key", port):
        return subprocess.run(
            [sys.executable, "-c", resolver + script],
            env={**os.environ, **env, "WEBHOOK_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_helm_test_hook_gets_an_answer_from_the_operator_webhook(tmp_path):
    """The hook verifies TLS against the chart's CA and gets the injection as a JSON patch."""
    result = _run_hook(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {
        "uid_matches": True,
        "allowed": True,
        "patchType": "JSONPatch",
        "injects": True,
    }


def test_helm_test_hook_fails_when_the_webhook_returns_no_patch(tmp_path):
    """kopf answers a request on any other path "allowed" without a patch (a webhook
    configuration with a wrong path): `helm test` must fail, saying so."""
    result = _run_hook(tmp_path, path="/not-the-handler")
    assert result.returncode == 1, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["allowed"] is True and answer["injects"] is False
    assert "without a patch that adds the ray-pixi-payload init container" in result.stderr
