"""Webhook TLS: the generated certificate, its stability across upgrades, cert-manager mode, and
the `helm test` hook answered by the operator's real webhook server over that TLS.

Offline rendering has no cluster, so Helm's `lookup` finds nothing there. The upgrade test
renders a copy of the chart whose one `lookup` call (the helper
`ray-pixi.existingWebhookTLSSecret`) returns the Secret of the first render, exactly what
`lookup` returns on `helm upgrade` against a cluster; tests/chart/test_chart_install.py does the
same against a real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import helm_python
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

LOOKUP_CALL = (
    '{{- lookup "v1" "Secret" .Release.Namespace '
    '(include "ray-pixi.webhookTLSSecretName" .) | toJson -}}'
)


def _pem(b64: str) -> bytes:
    return base64.b64decode(b64)


def _tls(objects: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    secret = one(objects, "Secret")
    (webhook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    return secret["data"], webhook["clientConfig"]["caBundle"]


def chart_with_existing_secret(tmp_path: Path, secret: dict[str, Any] | None) -> helm_python.Chart:
    """A copy of the chart whose `lookup` of the TLS Secret returns `secret` (None: nothing)."""
    copy_dir = tmp_path / "ray-pixi"
    shutil.copytree(CHART_DIR, copy_dir)
    helpers = copy_dir / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    assert text.count(LOOKUP_CALL) == 1, "the chart's lookup of its TLS Secret moved"
    found = json.dumps(secret) if secret else "{}"
    assert "`" not in found
    helpers.write_text(text.replace(LOOKUP_CALL, "{{- `" + found + "` -}}"))
    return helm_python.Chart.load(copy_dir)


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
    del secret["metadata"]["annotations"]  # the test mark; the cluster's copy has none
    chart = chart_with_existing_secret(tmp_path, secret)
    upgraded = objects_of(render_raw({"logLevel": "DEBUG"}, chart_obj=chart, upgrade=True))
    assert _tls(upgraded) == _tls(installed)
    assert _tls(upgraded)[1] == secret["data"]["ca.crt"]


def test_incomplete_secret_is_replaced_with_a_new_pair(tmp_path):
    installed = objects_of(render_raw())
    secret = one(installed, "Secret")
    del secret["data"]["ca.crt"]
    chart = chart_with_existing_secret(tmp_path, secret)
    data, ca_bundle = _tls(objects_of(render_raw(chart_obj=chart, upgrade=True)))
    assert data["tls.crt"] != secret["data"]["tls.crt"]
    assert ca_bundle == data["ca.crt"]


def test_each_offline_render_carries_a_fresh_consistent_pair():
    """What `helm template` does (no cluster for `lookup`): new pair, matching caBundle."""
    first, second = objects_of(render_raw()), objects_of(render_raw())
    assert _tls(first)[0]["tls.crt"] != _tls(second)[0]["tls.crt"]
    for objects in (first, second):
        data, ca_bundle = _tls(objects)
        assert ca_bundle == data["ca.crt"]


# --- cert-manager ----------------------------------------------------------------------------


def test_cert_manager_mode_has_no_generated_material():
    objects = render(VARIANTS["cert-manager"])
    assert of_kind(objects, "Secret") == []
    config = one(objects, "MutatingWebhookConfiguration")
    (webhook,) = config["webhooks"]
    assert "caBundle" not in webhook["clientConfig"]
    certificate = one(objects, "Certificate")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    issuer = one(objects, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    service = one(objects, "Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]


def test_cert_manager_with_a_cluster_issuer():
    objects = render(VARIANTS["cert-manager-cluster-issuer"])
    assert of_kind(objects, "Issuer") == []
    spec = one(objects, "Certificate")["spec"]
    assert spec["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert spec["duration"] == "2160h"


# --- `helm test` against the operator's webhook server ----------------------------------------


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def test_helm_test_hook_gets_an_answer_from_the_operator_webhook(tmp_path):
    """The hook's script, run as in its pod, verifies TLS against the chart's CA and is answered."""
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
    port = _free_port()
    url = re.sub(r":443/", f":{port}/", env["WEBHOOK_URL"])
    service_host = url.split("/")[2].split(":")[0]
    # The pod resolves the Service name through cluster DNS; here it resolves to loopback.
    resolver = (
        "import socket\n"
        "_real = socket.getaddrinfo\n"
        f"socket.getaddrinfo = lambda host, *a, **k: _real('127.0.0.1' if host == {service_host!r} "
        "else host, *a, **k)\n"
    )
    with running_webhook(tmp_path / "tls.crt", tmp_path / "tls.key", port):
        result = subprocess.run(
            [sys.executable, "-c", resolver + script],
            env={**os.environ, **env, "WEBHOOK_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"uid_matches": True, "allowed": True, "patchType": "JSONPatch"}
