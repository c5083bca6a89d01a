"""Run real pixi in the session's offline world, with nothing of the caller's pixi or
Python environment leaking in."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["clean_environ", "run_pixi"]

# What would make pixi pick another workspace, environment, config or interpreter.
_LEAKY_PREFIXES = ("PIXI_", "CONDA_", "RATTLER_")
_LEAKY = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XDG_CONFIG_HOME"}


def clean_environ(env: Mapping[str, str]) -> dict[str, str]:
    """`os.environ` without pixi/conda/venv selectors, then `env` on top."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY}
    return base | dict(env)


def run_pixi(args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`$RAY_PIXI_EXE <args>` with `env` (e.g. `pixi_node_env`); never raises on exit code."""
    return subprocess.run([env["RAY_PIXI_EXE"], *args], env=clean_environ(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)
