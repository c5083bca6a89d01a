"""The site settings a user declares in a RayCluster for air-gapped Ray nodes (tests/node
/site.py), without a node: the add-on's webhook keeps them. That a Pod finds pixi's
configuration and the CA bundle at the paths its env names is what the node tests show."""

from __future__ import annotations

import ipaddress
import os
import tomllib

from ray_pixi_operator import Settings
from ray_pixi_operator.mutation import prepare

from node.raycluster import e2e_cluster
from node.site import add_site, build_no_proxy
from realpixi.config import build_config_toml

IMAGES = {"rayproject/ray:2.60.0-py311": "ray:test"}
PROXY = "http://172.30.0.1:40000"
NO_PROXY = build_no_proxy(ipaddress.ip_network("172.30.0.0/16"))
CONFIG = build_config_toml("http://172.30.0.1:40001/conda-forge",
                           "http://172.30.0.1:40001/conda-mapping")  # fmt: skip


def _templates(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def _env(template: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in template["spec"]["containers"][0]["env"]}


def test_no_proxy_keeps_loopback_the_pod_network_and_cluster_names_off_the_proxy() -> None:
    assert NO_PROXY.split(",") == ["127.0.0.1", "localhost", "::1", "172.30.0.0/16",
                                   ".svc.cluster.local"]  # fmt: skip


def test_every_ray_container_gets_the_settings_and_the_webhook_keeps_them(monkeypatch) -> None:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_PIXI_PAYLOAD_IMAGE", "ray-pixi:test")
    cluster = add_site(e2e_cluster("raycluster.yaml", IMAGES), PROXY, NO_PROXY)
    prepared = prepare(cluster, Settings.from_env(os.environ)).body
    for template in _templates(prepared):
        env = _env(template)
        assert env["PIXI_CONFIG_FILE"] == "/etc/ray-pixi-node/config.toml"
        assert env["SSL_CERT_FILE"] == "/etc/site-ca/ca-certificates.crt"
        assert env["HTTPS_PROXY"] == env["https_proxy"] == PROXY
        assert env["NO_PROXY"] == env["no_proxy"] == NO_PROXY
        assert "RAY_PIXI_STORE_DIR" in env  # and the add-on's own settings are there too
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["ray-pixi-node-config"] == {
            "name": "ray-pixi-node-config", "configMap": {"name": "ray-pixi-node-config"}}
        assert volumes["site-ca-bundle"]["configMap"] == {"name": "site-ca-bundle"}


def test_the_node_config_mirrors_conda_forge_to_the_site_and_trusts_the_system_roots() -> None:
    config = tomllib.loads(CONFIG)
    assert config["tls-root-certs"] == "system"
    assert config["mirrors"]["https://conda.anaconda.org/conda-forge"] == [
        "http://172.30.0.1:40001/conda-forge"]
