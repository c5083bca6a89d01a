"""Realistic manifests for the offline world (pure builders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from .channel import Channel
from .recipes import ActivationRecipe

__all__ = ["PYPI_PACKAGE", "PYPI_VERSION", "build_manifest", "ray_requirement", "write_manifest"]

# A small pure-Python PyPI package that the channel does not hold, with no dependencies.
PYPI_PACKAGE, PYPI_VERSION = "pyjokes", "0.8.3"


def build_manifest(channel: Channel, *, activation: bool = True, pypi: bool = True,
                   name: str = "offline") -> str:
    """pixi.toml text: conda-forge (the site's mirror serves it), python at exactly the
    channel's version, noarch `six`, optionally the activation package and a PyPI
    dependency (which makes pixi map conda packages to PyPI names and run uv)."""
    dependencies = {"python": f"=={channel.version('python')}", "six": "*"}
    if activation:
        dependencies[ActivationRecipe().name] = "*"
    manifest: dict[str, Any] = {
        "workspace": {"name": name, "channels": ["conda-forge"], "platforms": ["linux-64"]},
        "dependencies": dependencies,
    }
    if pypi:
        manifest["pypi-dependencies"] = {PYPI_PACKAGE: f"=={PYPI_VERSION}"}
    return tomli_w.dumps(manifest)


def ray_requirement(version: str) -> dict[str, Any]:
    """Ray as a project lists it under [pypi-dependencies] for a cluster of Ray `version`:
    that exact version, with the extras the Jobs API needs."""
    return {"version": f"=={version}", "extras": ["default"]}


def write_manifest(directory: Path, channel: Channel, **options: bool) -> Path:
    """`directory/pixi.toml` from `build_manifest`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "pixi.toml"
    manifest.write_text(build_manifest(channel, **options))  # type: ignore[arg-type]
    return manifest
