"""What the node and the cluster are: the versions an environment must match and the
platform it installs for. Read once per agent; pure helpers compare versions."""

from __future__ import annotations

import os
import platform as _platform
import sys
from dataclasses import dataclass

from ray_pixi import settings

__all__ = ["ClusterInfo", "node_platform", "python_mismatch"]


def node_platform(system: str | None = None, machine: str | None = None) -> str:
    """The pixi platform name of this node, e.g. `linux-64` or `osx-arm64`."""
    system = system or sys.platform
    machine = (machine or _platform.machine()).lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64",
            "ppc64le": "ppc64le"}.get(machine, machine)
    if system.startswith("linux"):
        return f"linux-{arch}"
    if system == "darwin":
        return "osx-arm64" if arch in ("arm64", "aarch64") else "osx-64"
    if system in ("win32", "cygwin"):
        return "win-64"
    return f"{system}-{arch}"


@dataclass(frozen=True)
class ClusterInfo:
    """The Python and Ray every worker of this cluster must run, and this node's platform.

    The runtime_env agent runs the cluster's own interpreter and Ray, so it reads both
    from itself.
    """

    python_version: str
    ray_version: str
    platform: str
    match_level: str = "patch"

    @classmethod
    def current(cls, match_level: str | None = None) -> ClusterInfo:
        """This node's; the match level is the node's setting unless given."""
        import ray

        level = settings.python_match_level(os.environ) if match_level is None else match_level
        return cls(
            python_version="{}.{}.{}".format(*sys.version_info[:3]),
            ray_version=ray.__version__,
            platform=node_platform(),
            match_level=level,
        )


def python_mismatch(cluster: ClusterInfo, env_python: str) -> bool:
    """Whether Ray would refuse a worker running `env_python` on this cluster."""
    parts = 2 if cluster.match_level == "minor" else 3
    return env_python.split(".")[:parts] != cluster.python_version.split(".")[:parts]
