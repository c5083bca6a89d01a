"""What a worker inside a pixi environment starts with: the environment's activation
underneath the runtime_env's own env_vars, and nothing of ray-pixi itself.

On KubeRay the add-on makes the plugin (ray_pixi, with what it vendors inside it) importable
by the runtime_env agent in one of two ways: through Python's user site (PYTHONUSERBASE names
the payload's directory, whose `lib/python3.X/site-packages/*.pth` adds the payload to
sys.path), or on PYTHONPATH. Workers inherit the raylet's variables, so without care every
worker inside a user's pixi environment would import the payload ahead of what the
environment pinned. Whichever way this agent's own ray_pixi came, workers do not get it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from ray_pixi.activation import Activation

__all__ = ["payload_dir", "payload_user_base", "worker_env_vars"]


def payload_dir() -> Path:
    """The sys.path entry this ray_pixi was imported from."""
    return Path(__file__).resolve().parents[1]


def _without(value: str, unwanted: Path) -> str | None:
    """`value` (a PYTHONPATH) without entries naming `unwanted`; None if none did."""
    entries = value.split(os.pathsep)
    kept = [e for e in entries if not e or Path(e).resolve() != unwanted]
    return None if len(kept) == len(entries) else os.pathsep.join(e for e in kept if e)


@functools.lru_cache(maxsize=8)
def payload_user_base(user_base: str, payload: Path) -> bool:
    """Whether `user_base` (a PYTHONUSERBASE) is how `payload` reached sys.path: a user site
    under it has a .pth whose path line names the payload."""
    for pth in Path(user_base).glob("lib/python3*/site-packages/*.pth"):
        try:
            lines = pth.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            if (pth.parent / line).resolve() == payload:
                return True
    return False


def worker_env_vars(
    activation: Activation,
    user_env_vars: Mapping[str, str],
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The env_vars Ray sets for a worker: activation, then the user's own (which win).

    When the node's PYTHONPATH, or the one Ray composed for this runtime_env, carries the
    plugin's payload directory, the worker gets that PYTHONPATH without it (anything else the
    image put there stays). When the node's PYTHONUSERBASE is the payload's, the worker gets
    an empty one: Python then uses its default user base (~/.local), as on a node without
    ray-pixi.
    """
    inherited = os.environ if inherited is None else inherited
    env = dict(activation.env_vars)
    payload = payload_dir()
    pythonpath = inherited.get("PYTHONPATH")
    if pythonpath and "PYTHONPATH" not in env:
        stripped = _without(pythonpath, payload)
        if stripped is not None:
            env["PYTHONPATH"] = stripped
    user_base = inherited.get("PYTHONUSERBASE")
    if user_base and "PYTHONUSERBASE" not in env and payload_user_base(user_base, payload):
        env["PYTHONUSERBASE"] = ""
    env.update(user_env_vars)
    # Ray's working_dir and py_modules plugins run before this one and compose the context's
    # PYTHONPATH from the node's, payload included: strip it there too.
    composed = user_env_vars.get("PYTHONPATH")
    if composed:
        stripped = _without(composed, payload)
        if stripped is not None:
            env["PYTHONPATH"] = stripped
    return env
