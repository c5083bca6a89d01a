"""Build the pixi.toml of an inline spec. Pure: the same spec and cluster give the same
bytes, which is what the environment key hashes."""

from __future__ import annotations

import re
from typing import Any

from ray_pixi.cluster import ClusterInfo
from ray_pixi.spec import PixiSpec
from ray_pixi.tomlread import vendored

try:
    import tomli_w
except ImportError:  # the KubeRay payload: vendored inside ray_pixi, never on sys.path
    tomli_w = vendored("tomli_w")

__all__ = ["INLINE_WORKSPACE_NAME", "build_inline_manifest", "declares_ray", "ray_requirement"]

INLINE_WORKSPACE_NAME = "ray-pixi-inline"
DEFAULT_CHANNELS = ("conda-forge",)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Ray as conda-forge packages it: the core and one package per extra.
CONDA_RAY_PACKAGES = frozenset({
    "ray", "ray-core", "ray-default", "ray-client", "ray-data", "ray-train", "ray-tune",
    "ray-rllib", "ray-serve", "ray-air", "ray-all", "ray-dashboard", "ray-observability",
})


def declares_ray(spec: PixiSpec) -> bool:
    """A user who names Ray (PyPI `ray`, or one of conda-forge's Ray packages) chooses its
    version; any other package whose name starts with `ray-` is not Ray."""
    conda = {_normalize(n) for n in spec.dependencies or {}}
    pypi = {_normalize(n) for n in spec.pypi_dependencies or {}}
    return "ray" in pypi or bool(conda & CONDA_RAY_PACKAGES)


def ray_requirement(ray_version: str) -> dict[str, Any]:
    """The PyPI requirement that gives workers the cluster's exact Ray."""
    return {"version": f"=={ray_version}", "extras": ["default"]}


def build_inline_manifest(spec: PixiSpec, cluster: ClusterInfo) -> str:
    dependencies = dict(spec.dependencies or {})
    dependencies.setdefault("python", f"=={cluster.python_version}")
    pypi = dict(spec.pypi_dependencies or {})
    if not declares_ray(spec):
        pypi["ray"] = ray_requirement(cluster.ray_version)
    document: dict[str, Any] = {
        "workspace": {
            "name": INLINE_WORKSPACE_NAME,
            "channels": list(spec.channels or DEFAULT_CHANNELS),
            "platforms": list(spec.platforms or (cluster.platform,)),
        },
        "dependencies": dict(sorted(dependencies.items())),
    }
    if pypi:
        document["pypi-dependencies"] = dict(sorted(pypi.items()))
    return tomli_w.dumps(document)
