"""The air-gapped site the node's Ray clusters live in: its mirror, its PyPI proxy, and the
pixi configuration its Ray nodes get.

The build machines reach no conda channel and PyPI only through a TLS-intercepting proxy:
an air-gapped cluster's situation. So the node's Pods get the offline world the other
tests use (tests/realpixi), reachable from their own network and from nowhere else: the
`Mirror` (the local channel as conda-forge, and the conda->PyPI mapping service) and the
`ConnectRecorder` (an HTTPS_PROXY that tunnels only to PyPI and records every attempt) listen
on the node's address, which the Pods reach through their bridge.

What the Ray containers get is what a user declares in the RayCluster today: the chart has no
value for the node pixi configuration yet (issue 13 adds one), so `add_site` puts into each
Ray container (`containers[0]` of every group):

- ConfigMap `ray-pixi-node-config` (`config.toml`: `[mirrors]` for conda-forge and the
  mapping service on the bridge address, `tls-root-certs = "system"`), mounted read-only at
  /etc/ray-pixi-node and named by `PIXI_CONFIG_FILE` (pixi 0.77 then reads that file only);
- ConfigMap `site-ca-bundle` (the build host's CA bundle, which holds the intercepting proxy's
  CA; the Ray image has no CA store at all), mounted at /etc/site-ca and named by
  `SSL_CERT_FILE`, which pixi and its uv prefer over every other root setting;
- `HTTPS_PROXY`/`https_proxy`: the recorder; `NO_PROXY`/`no_proxy`: loopback, the Pod network
  and the cluster's DNS suffix, so that only pixi's PyPI traffic goes to the proxy (gRPC, and
  so Ray itself, honours `https_proxy` too).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realpixi.channel import Channel
from realpixi.config import LOOPBACK_NO_PROXY, build_config_toml
from realpixi.servers import ConnectRecorder, Mirror

from .images import HOST_CA_BUNDLE

__all__ = [
    "CA_BUNDLE_CONFIG_MAP",
    "NODE_CONFIG_MAP",
    "Site",
    "add_site",
    "build_config_maps",
    "build_no_proxy",
    "open_site",
]

Obj = dict[str, Any]

NODE_CONFIG_MAP = "ray-pixi-node-config"
NODE_CONFIG_DIR = "/etc/ray-pixi-node"
NODE_CONFIG_KEY = "config.toml"
CA_BUNDLE_CONFIG_MAP = "site-ca-bundle"
CA_BUNDLE_DIR = "/etc/site-ca"
CA_BUNDLE_KEY = "ca-certificates.crt"
# The cluster-DNS suffix: the worker reaches the head through its Service name.
CLUSTER_DOMAIN_SUFFIX = ".svc.cluster.local"


@dataclass(frozen=True)
class Site:
    """The site's servers (on the node's address) and what its Ray containers need."""

    mirror: Mirror
    proxy: ConnectRecorder
    config_toml: str
    ca_bundle: str
    no_proxy: str

    def config_maps(self, namespace: str) -> list[Obj]:
        return build_config_maps(namespace, self.config_toml, self.ca_bundle)

    def apply_to(self, manifest: Mapping[str, Any]) -> Obj:
        return add_site(manifest, self.proxy.url, self.no_proxy)


def build_no_proxy(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> str:
    """Loopback, the Pod network (as a CIDR block) and the cluster's DNS suffix."""
    parts = [LOOPBACK_NO_PROXY]
    if subnet is not None:
        parts.append(str(subnet))
    parts.append(CLUSTER_DOMAIN_SUFFIX)
    return ",".join(parts)


def build_config_maps(namespace: str, config_toml: str, ca_bundle: str) -> list[Obj]:
    """The node pixi configuration and the site's CA bundle, as ConfigMaps (pure)."""

    def config_map(name: str, key: str, text: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {key: text},
        }

    return [
        config_map(NODE_CONFIG_MAP, NODE_CONFIG_KEY, config_toml),
        config_map(CA_BUNDLE_CONFIG_MAP, CA_BUNDLE_KEY, ca_bundle),
    ]


def _templates(spec: Obj) -> Iterator[Obj]:
    yield spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs") or []:
        yield group["template"]


def add_site(manifest: Mapping[str, Any], https_proxy: str, no_proxy: str) -> Obj:
    """`manifest` (a RayCluster) with the site's settings in each group's Ray container,
    declared as a user does: ConfigMap volumes, their mounts and env vars (pure)."""
    cluster = copy.deepcopy(dict(manifest))
    env = [
        {"name": "PIXI_CONFIG_FILE", "value": f"{NODE_CONFIG_DIR}/{NODE_CONFIG_KEY}"},
        {"name": "SSL_CERT_FILE", "value": f"{CA_BUNDLE_DIR}/{CA_BUNDLE_KEY}"},
        {"name": "HTTPS_PROXY", "value": https_proxy},
        {"name": "https_proxy", "value": https_proxy},
        {"name": "NO_PROXY", "value": no_proxy},
        {"name": "no_proxy", "value": no_proxy},
    ]
    volumes = [
        {"name": NODE_CONFIG_MAP, "configMap": {"name": NODE_CONFIG_MAP}},
        {"name": CA_BUNDLE_CONFIG_MAP, "configMap": {"name": CA_BUNDLE_CONFIG_MAP}},
    ]
    mounts = [
        {"name": NODE_CONFIG_MAP, "mountPath": NODE_CONFIG_DIR, "readOnly": True},
        {"name": CA_BUNDLE_CONFIG_MAP, "mountPath": CA_BUNDLE_DIR, "readOnly": True},
    ]
    for template in _templates(cluster["spec"]):
        pod = template["spec"]
        pod.setdefault("volumes", []).extend(copy.deepcopy(volumes))
        ray = pod["containers"][0]
        ray.setdefault("env", []).extend(copy.deepcopy(env))
        ray.setdefault("volumeMounts", []).extend(copy.deepcopy(mounts))
    return cluster


@contextmanager
def open_site(host: str, subnet: ipaddress.IPv4Network, channel: Channel,
              ca_bundle: Path = HOST_CA_BUNDLE) -> Iterator[Site]:  # fmt: skip
    """The mirror and the PyPI proxy on `host` (the node's address), for Pods on `subnet`,
    until the block ends."""
    if not ca_bundle.is_file():
        raise RuntimeError(f"no CA bundle at {ca_bundle}: the Ray containers could not verify "
                           "PyPI through this machine's proxy")
    with Mirror(channel, host=host) as mirror, ConnectRecorder(host=host) as proxy:
        yield Site(
            mirror=mirror,
            proxy=proxy,
            config_toml=build_config_toml(mirror.channel_url, mirror.mapping_url),
            ca_bundle=ca_bundle.read_text(),
            no_proxy=build_no_proxy(subnet),
        )
