"""Realistic pixi projects for the live-cluster tests, locked with the session's real pixi
(offline: conda-forge is the loopback mirror of the test channel)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import tomli_w

from realpixi.manifest import ray_requirement
from realpixi.run import clean_environ

CLUSTER_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
# The line the plugin's error tells a user to add for this Ray (its text, not a manifest).
RAY_LINE = f'ray = {{ version = "=={ray.__version__}", extras = ["default"] }}\n'
ACTIVATION_PACKAGE = "ray-pixi-test-activation"


def manifest_text(name: str, *, pypi: Mapping[str, Any] | None = None,
                  conda: Mapping[str, Any] | None = None,
                  ray_version: str | None = ray.__version__,
                  python: str = f"=={CLUSTER_PYTHON}",
                  tables: Mapping[str, Any] | None = None) -> str:
    """A pixi.toml on conda-forge with `python` (the cluster's exact one unless told) and
    `conda` under [dependencies], `pypi` and Ray at `ray_version` (None: no Ray) under
    [pypi-dependencies], and more top-level `tables`."""
    ray_dependency = {"ray": ray_requirement(ray_version)} if ray_version else {}
    return tomli_w.dumps({
        "workspace": {"name": name, "channels": ["conda-forge"], "platforms": ["linux-64"]},
        "dependencies": {"python": python, **(conda or {})},
        "pypi-dependencies": {**(pypi or {}), **ray_dependency},
        **(tables or {}),
    })


def pixi_lock(manifest: Path, node_env: Mapping[str, str]) -> None:
    """`pixi lock` with the session's real pixi, as a user does before submitting."""
    done = subprocess.run([node_env["RAY_PIXI_EXE"], "lock", "--manifest-path", str(manifest)],
                          env=clean_environ(node_env), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (manifest.parent / "pixi.lock").is_file()


def write_locked(manifest: Path, text: str, node_env: Mapping[str, str]) -> Path:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(text)
    pixi_lock(manifest, node_env)
    return manifest


def write_package(root: Path, value: int) -> None:
    """A local package `mypkg` (src layout, hatchling) that a manifest installs editable."""
    (root / "src" / "mypkg").mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "mypkg"\nversion = "0.1"\n'
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n')
    (root / "src" / "mypkg" / "__init__.py").write_text(f"VALUE = {value}\n")
