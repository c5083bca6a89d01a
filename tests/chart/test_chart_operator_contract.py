"""The chart and the operator agree: env vars vs. settings, webhook TLS files, ports and paths."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from chart_render import (
    NAMESPACE,
    VARIANTS,
    container_env,
    deployment_of,
    deployments,
    of_kind,
    one,
    render,
)
from ray_pixi_operator import names
from ray_pixi_operator.settings import Settings


def _settings_from(env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings.from_env on the rendered env, with the mounted TLS files stood in by local ones."""
    local = dict(env)
    for name in ("RAY_PIXI_WEBHOOK_CERT_FILE", "RAY_PIXI_WEBHOOK_KEY_FILE"):
        if env[name]:
            stand_in = tmp_path / Path(env[name]).name
            stand_in.write_text("PEM")
            local[name] = str(stand_in)
    return Settings.from_env(local)


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_env_is_exactly_what_the_operator_reads(variant, tmp_path):
    """Every setting reaches each role, and it reads nothing the chart does not set."""
    for deployment in deployments(render(VARIANTS[variant])):
        env = container_env(deployment)
        assert set(env) == set(Settings.env_names())
        _settings_from(env, tmp_path)  # and the operator accepts every value


@pytest.mark.parametrize("variant", VARIANTS)
def test_both_roles_inject_with_the_same_settings(variant, tmp_path):
    """What the reconciler compares clusters with is what the webhook injects."""
    objects = render(VARIANTS[variant])
    if VARIANTS[variant].get("reconciler", {}).get("enabled") is False:
        assert len(deployments(objects)) == 1
        return
    webhook = _settings_from(container_env(deployment_of(objects, "webhook")), tmp_path)
    reconciler = _settings_from(container_env(deployment_of(objects, "reconciler")), tmp_path)
    fields = (
        "payload_image",
        "payload_image_pull_policy",
        "pixi_version",
        "cache_volume",
        "cache_size_limit",
        "cache_host_path",
        "cache_pvc_name",
        "plugin_cache_size_gb",
        "namespaces",
    )
    assert {f: getattr(webhook, f) for f in fields} == {f: getattr(reconciler, f) for f in fields}
    # Only the webhook serves TLS and drains.
    assert reconciler.webhook_cert_file is None and reconciler.webhook_drain_seconds == 0
    assert webhook.webhook_cert_file is not None and webhook.webhook_drain_seconds > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_arrive_as_the_operator_settings(variant, tmp_path):
    values = VARIANTS[variant]
    env = container_env(deployment_of(render(values), "webhook"))
    settings = _settings_from(env, tmp_path)
    injection = values.get("injection", {})
    cache = injection.get("cache", {})
    assert settings.cache_volume == cache.get("volume", "emptyDir")
    if settings.cache_volume == "emptyDir":
        assert settings.cache_size_limit == (cache.get("sizeLimit", "20Gi") or None)
    else:
        assert settings.cache_size_limit is None
    assert settings.cache_host_path == cache.get("hostPath", "/var/cache/ray-pixi")
    assert settings.cache_pvc_name == (cache.get("pvcName") or None)
    assert settings.plugin_cache_size_gb == 10.0
    assert settings.pixi_version == (injection.get("pixiVersion") or None)
    assert settings.namespaces == tuple(values.get("namespaces", ()))
    assert settings.log_level == values.get("logLevel", "INFO")
    assert settings.webhook_port == 9443 and settings.health_port == 8080
    # The chart owns the webhook configuration; kopf must not manage one.
    assert settings.webhook_managed is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhook_tls_files_are_the_mounted_secret(variant):
    objects = render(VARIANTS[variant])
    deployment = deployment_of(objects, "webhook")
    env = container_env(deployment)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    tls_dir = mounts["webhook-tls"]["mountPath"]
    assert mounts["webhook-tls"]["readOnly"] is True
    assert env["RAY_PIXI_WEBHOOK_CERT_FILE"] == f"{tls_dir}/tls.crt"
    assert env["RAY_PIXI_WEBHOOK_KEY_FILE"] == f"{tls_dir}/tls.key"
    secret_name = volumes["webhook-tls"]["secret"]["secretName"]
    tls = VARIANTS[variant].get("webhook", {}).get("tls", {})
    if tls.get("certManager", {}).get("enabled"):
        (serving,) = [c for c in of_kind(objects, "Certificate") if not c["spec"].get("isCA")]
        assert serving["spec"]["secretName"] == secret_name
    elif tls.get("existingSecret"):
        assert secret_name == tls["existingSecret"]
        assert of_kind(objects, "Secret") == []  # brought along, never rendered
    else:
        secret = one(objects, "Secret")
        assert secret["metadata"]["name"] == secret_name
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
        assert all(base64.b64decode(v) for v in secret["data"].values())


def test_webhook_host_is_a_name_in_the_certificate():
    objects = render(VARIANTS["cert-manager"])
    env = container_env(deployment_of(objects, "webhook"))
    service = one(objects, "Service")["metadata"]["name"]
    assert env["RAY_PIXI_WEBHOOK_HOST"] == f"{service}.{NAMESPACE}.svc"
    (serving,) = [c for c in of_kind(objects, "Certificate") if not c["spec"].get("isCA")]
    assert env["RAY_PIXI_WEBHOOK_HOST"] in serving["spec"]["dnsNames"]


def test_chart_constants_match_the_operator_names():
    """Path, label and pod-side names the chart spells out are the operator's constants."""
    chart_dir = Path(__file__).resolve().parents[2] / "charts" / "ray-pixi"
    helpers = (chart_dir / "templates" / "_helpers.tpl").read_text()
    assert f"\n{names.WEBHOOK_PATH}\n" in helpers
    assert f"\n{names.ENABLED_LABEL}\n" in helpers
    payload = (
        Path(__file__).resolve().parents[2]
        / "operator"
        / "src"
        / "ray_pixi_operator"
        / "payload.py"
    ).read_text()
    assert 'SHARED_DIRS = ("store", "pixi-cache")' in payload
    assert names.STORE_DIR == names.MOUNT_PATH + "/store"
    assert names.PIXI_CACHE_DIR == names.MOUNT_PATH + "/pixi-cache"
    assert names.PAYLOADS_DIR == names.MOUNT_PATH + "/payloads"
    assert names.payload_dir("ghcr.io/x/ray-pixi:0.2.0").startswith(names.PAYLOADS_DIR + "/0.2.0-")


@pytest.mark.parametrize(
    "command",
    [names.PAYLOAD_ADD_COMMAND, names.PREPARE_VOLUME_COMMAND, names.LEGACY_PAYLOAD_COMMAND[:2]],
)
def test_the_init_containers_commands_are_the_payload_clis(command, capsys):
    """What the mutation runs in the init containers is a command of ray-pixi-payload."""
    from ray_pixi_operator.payload import main

    assert command[0] == "ray-pixi-payload"
    with pytest.raises(SystemExit) as exited:
        main([command[1], "--help"])
    assert exited.value.code == 0
    assert command[1] in capsys.readouterr().out
