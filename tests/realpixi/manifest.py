"""Realistic manifests for the offline world (pure builders)."""

from __future__ import annotations

from pathlib import Path

from .channel import Channel
from .recipes import ActivationRecipe

__all__ = ["PYPI_PACKAGE", "PYPI_VERSION", "build_manifest", "write_manifest"]

# A small pure-Python PyPI package that the channel does not hold, with no dependencies.
PYPI_PACKAGE, PYPI_VERSION = "pyjokes", "0.8.3"


def build_manifest(channel: Channel, *, activation: bool = True, pypi: bool = True,
                   name: str = "offline") -> str:
    """pixi.toml text: conda-forge (the site's mirror serves it), python at exactly the
    channel's version, noarch `six`, optionally the activation package and a PyPI
    dependency (which makes pixi map conda packages to PyPI names and run uv)."""
    lines = [
        "[workspace]", f'name = "{name}"', 'channels = ["conda-forge"]',
        'platforms = ["linux-64"]', "", "[dependencies]",
        f'python = "=={channel.version("python")}"', 'six = "*"',
    ]
    if activation:
        lines.append(f'{ActivationRecipe().name} = "*"')
    if pypi:
        lines += ["", "[pypi-dependencies]", f'{PYPI_PACKAGE} = "=={PYPI_VERSION}"']
    return "\n".join(lines) + "\n"


def write_manifest(directory: Path, channel: Channel, **options: bool) -> Path:
    """`directory/pixi.toml` from `build_manifest`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "pixi.toml"
    manifest.write_text(build_manifest(channel, **options))  # type: ignore[arg-type]
    return manifest
