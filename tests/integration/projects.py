"""Realistic pixi projects for the live-cluster tests, locked with the session's real pixi
(offline: conda-forge is the loopback mirror of the test channel)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import ray

from realpixi.run import clean_environ

CLUSTER_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
RAY_LINE = f'ray = {{ version = "=={ray.__version__}", extras = ["default"] }}\n'
ACTIVATION_PACKAGE = "ray-pixi-test-activation"


def manifest_text(name: str, pypi: str = "", conda: str = "", extra: str = "",
                  with_ray: bool = True) -> str:
    """A pixi.toml on conda-forge pinning the cluster's Python, with `conda` lines under
    [dependencies] and `pypi` lines (plus Ray, unless told not to) under
    [pypi-dependencies]."""
    return (f'[workspace]\nname = "{name}"\nchannels = ["conda-forge"]\n'
            f'platforms = ["linux-64"]\n\n[dependencies]\npython = "=={CLUSTER_PYTHON}"\n'
            f"{conda}\n[pypi-dependencies]\n{pypi}{RAY_LINE if with_ray else ''}{extra}")


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
