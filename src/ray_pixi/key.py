"""The store key of an installed environment. Pure.

Every input that changes what `pixi install` puts on disk feeds the key, so one key is one
environment: the env-defining bytes, the environment name, the node's platform, the
cluster's Python and Ray (a cluster upgrade must not reuse an env built for the old one),
the pixi version and the install options. The runtime_env's URI (`ray_pixi.uris`) names a
request; several URIs can map to one key (a project uploaded twice with an edited driver
script), and the key is computed on the node, where the node's facts are known.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ray_pixi.cluster import ClusterInfo
from ray_pixi.manifest import build_inline_manifest
from ray_pixi.spec import Mode, PixiSpec

__all__ = ["STORE_LAYOUT", "build_env_key", "digest", "env_inputs"]

#: Bumped whenever the store's on-disk layout or activation format changes.
STORE_LAYOUT = 2
KEY_LENGTH = 32


def build_env_key(
    spec: PixiSpec, cluster: ClusterInfo, pixi_version: str, project_digest: str | None = None,
    lock_sha: str | None = None,
) -> str:
    """`project_digest` is the digest of a project's env-defining files as the node
    received them (required in project mode). `lock_sha` names the cluster's solution a
    spec without a lock installs (`ray_pixi.solution`): two solutions are two environments,
    so a node never reuses one built from another solution than the cluster's."""
    inputs: dict[str, Any] = {
        "layout": STORE_LAYOUT,
        **env_inputs(spec, cluster, pixi_version, project_digest),
        "install_options": list(spec.pixi_install_options),
        "locked": spec.install_locked,
    }
    if lock_sha is not None:
        inputs["solution"] = lock_sha
    if spec.solve_tag is not None:  # a fresh solve is a new environment, never a reuse
        inputs["solve_tag"] = spec.solve_tag
    return digest(inputs)


def env_inputs(spec: PixiSpec, cluster: ClusterInfo, pixi_version: str,
               project_digest: str | None = None) -> dict[str, Any]:
    """What defines the environment a spec asks for on this cluster: its manifest (an
    inline spec's as the node writes it), environment, platform, Python, Ray and pixi.
    Shared by the store key and the cluster's solution key (`ray_pixi.solution`)."""
    inputs: dict[str, Any] = {
        "mode": spec.mode.value,
        "environment": spec.environment,
        "platform": cluster.platform,
        "python": cluster.python_version,
        "ray": cluster.ray_version,
        "pixi": pixi_version,
    }
    if spec.mode is Mode.INLINE:
        inputs["manifest"] = build_inline_manifest(spec, cluster)
    elif spec.mode is Mode.MANIFEST:
        inputs["manifest"] = [spec.manifest, spec.manifest_content, spec.lock_text()]
    else:
        if project_digest is None:
            raise ValueError("a project spec needs the digest of its files to be keyed")
        inputs["manifest"] = [spec.manifest, project_digest]
    return inputs


def digest(inputs: dict[str, Any]) -> str:
    """A key: the sha256 of the inputs as canonical JSON, shortened."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
