"""Operator settings: env vars -> one typed object, and startup errors a chart user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_pixi_operator import Settings, SettingsError

IMAGE = {"RAY_PIXI_PAYLOAD_IMAGE": "ghcr.io/example/ray-pixi:0.1.0"}

ALL_NAMES = (
    "RAY_PIXI_PAYLOAD_IMAGE",
    "RAY_PIXI_PAYLOAD_IMAGE_PULL_POLICY",
    "RAY_PIXI_PAYLOAD_IMAGE_PULL_SECRETS",
    "RAY_PIXI_PIXI_VERSION",
    "RAY_PIXI_CACHE_VOLUME",
    "RAY_PIXI_CACHE_SIZE_LIMIT",
    "RAY_PIXI_CACHE_HOST_PATH",
    "RAY_PIXI_CACHE_HOST_PATH_PREPARE",
    "RAY_PIXI_CACHE_PVC_NAME",
    "RAY_PIXI_PLUGIN_CACHE_SIZE_GB",
    "RAY_PIXI_DISK_BUDGET_GB",
    "RAY_PIXI_PIXI_CONFIG_MAP",
    "RAY_PIXI_PIXI_AUTH_SECRET",
    "RAY_PIXI_INIT_CONTAINER_CPU",
    "RAY_PIXI_INIT_CONTAINER_MEMORY",
    "RAY_PIXI_WEBHOOK_PORT",
    "RAY_PIXI_WEBHOOK_CERT_FILE",
    "RAY_PIXI_WEBHOOK_KEY_FILE",
    "RAY_PIXI_WEBHOOK_HOST",
    "RAY_PIXI_WEBHOOK_MANAGED",
    "RAY_PIXI_WEBHOOK_CERT_RELOAD_SECONDS",
    "RAY_PIXI_WEBHOOK_DRAIN_SECONDS",
    "RAY_PIXI_NAMESPACES",
    "RAY_PIXI_HEALTH_PORT",
    "RAY_PIXI_LOG_LEVEL",
)


def test_env_names_lists_every_setting_once():
    assert Settings.env_names() == ALL_NAMES


def test_defaults_with_only_the_payload_image():
    settings = Settings.from_env(IMAGE)
    assert settings.payload_image == "ghcr.io/example/ray-pixi:0.1.0"
    assert settings.payload_image_pull_policy == "IfNotPresent"
    assert settings.pixi_version is None
    assert settings.cache_volume == "emptyDir"
    assert settings.cache_size_limit is None
    assert settings.cache_host_path == "/var/cache/ray-pixi"
    assert settings.plugin_cache_size_gb == 10.0
    assert settings.webhook_port == 9443
    assert settings.webhook_cert_file is None and settings.webhook_managed is None
    assert settings.namespaces == ()
    assert settings.health_port == 8080
    assert settings.log_level == "INFO"
    assert (settings.webhook_cert_reload_seconds, settings.webhook_drain_seconds) == (10.0, 10.0)


def test_every_setting_is_read(tmp_path: Path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    settings = Settings.from_env(
        {
            **IMAGE,
            "RAY_PIXI_PAYLOAD_IMAGE_PULL_POLICY": "Always",
            "RAY_PIXI_PIXI_VERSION": "0.40.3",
            "RAY_PIXI_CACHE_VOLUME": "persistentVolumeClaim",
            "RAY_PIXI_CACHE_HOST_PATH": "/mnt/ray-pixi",
            "RAY_PIXI_CACHE_PVC_NAME": "ray-envs",
            "RAY_PIXI_PLUGIN_CACHE_SIZE_GB": "2.5",
            "RAY_PIXI_WEBHOOK_PORT": "8443",
            "RAY_PIXI_WEBHOOK_CERT_FILE": str(cert),
            "RAY_PIXI_WEBHOOK_KEY_FILE": str(key),
            "RAY_PIXI_WEBHOOK_HOST": "ray-pixi.ray-system.svc",
            "RAY_PIXI_WEBHOOK_MANAGED": "ray-pixi.example.com",
            "RAY_PIXI_WEBHOOK_CERT_RELOAD_SECONDS": "2.5",
            "RAY_PIXI_WEBHOOK_DRAIN_SECONDS": "0",
            "RAY_PIXI_NAMESPACES": "ml, serving",
            "RAY_PIXI_HEALTH_PORT": "8081",
            "RAY_PIXI_LOG_LEVEL": "debug",
            "RAY_PIXI_INIT_CONTAINER_CPU": "0.5",
            "RAY_PIXI_INIT_CONTAINER_MEMORY": "1Gi",
        }
    )
    assert (settings.init_container_cpu, settings.init_container_memory) == ("0.5", "1Gi")
    assert settings.cache_pvc_name == "ray-envs"
    assert settings.plugin_cache_size_gb == 2.5
    assert settings.webhook_cert_file == cert
    assert settings.namespaces == ("ml", "serving")
    assert settings.log_level == "DEBUG"
    assert (settings.webhook_cert_reload_seconds, settings.webhook_drain_seconds) == (2.5, 0.0)


def test_empty_values_mean_unset_as_a_chart_renders_them():
    settings = Settings.from_env({**IMAGE, **{name: "" for name in ALL_NAMES[1:]}})
    assert settings == Settings.from_env(IMAGE)


def test_settings_are_frozen():
    settings = Settings.from_env(IMAGE)
    with pytest.raises(ValueError):
        settings.payload_image = "other"  # type: ignore[misc]


INVALID = [
    ({"RAY_PIXI_PAYLOAD_IMAGE": ""}, "Invalid RAY_PIXI_PAYLOAD_IMAGE='': required"),
    (
        {"RAY_PIXI_PAYLOAD_IMAGE": "ray pixi"},
        "Invalid RAY_PIXI_PAYLOAD_IMAGE='ray pixi': must be the image",
    ),
    (
        {"RAY_PIXI_PAYLOAD_IMAGE_PULL_POLICY": "always"},
        "Invalid RAY_PIXI_PAYLOAD_IMAGE_PULL_POLICY='always': must be one of Always, IfNotPresent, Never",  # noqa: E501
    ),
    (
        {"RAY_PIXI_PIXI_VERSION": "v0.40"},
        "Invalid RAY_PIXI_PIXI_VERSION='v0.40': must be a pixi release version X.Y.Z",
    ),
    (
        {"RAY_PIXI_CACHE_VOLUME": "nfs"},
        "Invalid RAY_PIXI_CACHE_VOLUME='nfs': must be one of emptyDir, hostPath, persistentVolumeClaim",  # noqa: E501
    ),
    (
        {"RAY_PIXI_CACHE_SIZE_LIMIT": "20GB"},
        "Invalid RAY_PIXI_CACHE_SIZE_LIMIT='20GB': must be a positive Kubernetes quantity",
    ),
    (
        {"RAY_PIXI_CACHE_HOST_PATH": "/var/../etc"},
        "Invalid RAY_PIXI_CACHE_HOST_PATH='/var/../etc': must be an absolute directory path",
    ),
    (
        {"RAY_PIXI_PLUGIN_CACHE_SIZE_GB": "0"},
        "Invalid RAY_PIXI_PLUGIN_CACHE_SIZE_GB='0': must be a number of gigabytes greater than 0",
    ),
    ({"RAY_PIXI_PLUGIN_CACHE_SIZE_GB": "nan"}, "Invalid RAY_PIXI_PLUGIN_CACHE_SIZE_GB='nan'"),
    (
        {"RAY_PIXI_WEBHOOK_PORT": "99999"},
        "Invalid RAY_PIXI_WEBHOOK_PORT='99999': must be a TCP port number",
    ),
    (
        {"RAY_PIXI_WEBHOOK_CERT_FILE": "/nonexistent/tls.crt"},
        "Invalid RAY_PIXI_WEBHOOK_CERT_FILE='/nonexistent/tls.crt': must be the path of a readable PEM file",  # noqa: E501
    ),
    (
        {"RAY_PIXI_WEBHOOK_CERT_RELOAD_SECONDS": "0"},
        "Invalid RAY_PIXI_WEBHOOK_CERT_RELOAD_SECONDS='0': must be a number of seconds greater than 0",  # noqa: E501
    ),
    (
        {"RAY_PIXI_WEBHOOK_DRAIN_SECONDS": "-1"},
        "Invalid RAY_PIXI_WEBHOOK_DRAIN_SECONDS='-1': must be a number of seconds between 0 and 3600",  # noqa: E501
    ),
    (
        {"RAY_PIXI_NAMESPACES": "ml,Serving"},
        "Invalid RAY_PIXI_NAMESPACES='ml,Serving': must be a comma-separated list",
    ),
    (
        {"RAY_PIXI_INIT_CONTAINER_CPU": "200 m"},
        "Invalid RAY_PIXI_INIT_CONTAINER_CPU='200 m': must be a positive CPU quantity",
    ),
    (
        {"RAY_PIXI_INIT_CONTAINER_MEMORY": "256MB"},
        "Invalid RAY_PIXI_INIT_CONTAINER_MEMORY='256MB': must be a positive Kubernetes quantity",
    ),
    (
        {"RAY_PIXI_LOG_LEVEL": "chatty"},
        "Invalid RAY_PIXI_LOG_LEVEL='chatty': must be one of DEBUG, INFO, WARNING, ERROR",
    ),
    (
        {"RAY_PIXI_CACHE_VOLUME": "hostPath", "RAY_PIXI_CACHE_SIZE_LIMIT": "20Gi"},
        "Invalid RAY_PIXI_CACHE_SIZE_LIMIT='20Gi': applies only to RAY_PIXI_CACHE_VOLUME=emptyDir, not hostPath",  # noqa: E501
    ),
    (
        {"RAY_PIXI_CACHE_VOLUME": "persistentVolumeClaim"},
        "Invalid RAY_PIXI_CACHE_PVC_NAME='': required with RAY_PIXI_CACHE_VOLUME=persistentVolumeClaim",  # noqa: E501
    ),
]


@pytest.mark.parametrize(("env", "message"), INVALID)
def test_invalid_setting_fails_naming_the_variable_value_and_rule(env, message):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**IMAGE, **env})
    assert str(error.value).startswith(message)


def test_cert_without_key_is_refused(tmp_path: Path):
    cert = tmp_path / "tls.crt"
    cert.write_text("cert")
    with pytest.raises(SettingsError, match="Invalid RAY_PIXI_WEBHOOK_KEY_FILE='': set both"):
        Settings.from_env({**IMAGE, "RAY_PIXI_WEBHOOK_CERT_FILE": str(cert)})
