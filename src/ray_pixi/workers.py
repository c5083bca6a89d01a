"""What a worker inside a pixi environment starts with: the environment's activation
underneath the runtime_env's own env_vars, and nothing of ray-pixi itself.

On KubeRay the add-on puts the plugin (ray_pixi and what it vendors) on the Ray
container's PYTHONPATH so that the runtime_env agent can import it; workers inherit the
raylet's variables, so without care every worker inside a user's pixi environment would
import the payload's copies ahead of what the environment pinned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ray_pixi.activation import Activation

__all__ = ["payload_dir", "worker_env_vars"]


def payload_dir() -> Path:
    """The sys.path entry this ray_pixi was imported from."""
    return Path(__file__).resolve().parents[1]


def _without(value: str, unwanted: Path) -> str | None:
    """`value` (a PYTHONPATH) without entries naming `unwanted`; None if none did."""
    entries = value.split(os.pathsep)
    kept = [e for e in entries if not e or Path(e).resolve() != unwanted]
    return None if len(kept) == len(entries) else os.pathsep.join(e for e in kept if e)


def worker_env_vars(
    activation: Activation,
    user_env_vars: Mapping[str, str],
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The env_vars Ray sets for a worker: activation, then the user's own (which win).

    When the node's PYTHONPATH carries the plugin's payload directory, the worker gets that
    PYTHONPATH without it (anything else the image put there stays).
    """
    inherited = os.environ if inherited is None else inherited
    env = dict(activation.env_vars)
    pythonpath = inherited.get("PYTHONPATH")
    if pythonpath and "PYTHONPATH" not in env:
        stripped = _without(pythonpath, payload_dir())
        if stripped is not None:
            env["PYTHONPATH"] = stripped
    env.update(user_env_vars)
    return env
