"""Activation as data: the python a worker runs and the variables it runs with.

Captured once at install from `pixi shell-hook --json` and stored beside the environment,
so starting a worker runs no pixi process: it is `exec <env python>` with these variables,
exactly what `pixi run python` would have set.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Activation", "build_activation", "env_python"]

_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_python(prefix: Path) -> Path:
    """The interpreter of a conda prefix, where pixi puts it on each platform."""
    if sys.platform == "win32":
        return prefix / "python.exe"
    return prefix / "bin" / "python"


@dataclass(frozen=True)
class Activation:
    python: str
    env_vars: dict[str, str] = field(default_factory=dict)

    def py_executable(self) -> str:
        """The interpreter, quoted: Ray splices py_executable unquoted into `bash -c`."""
        return self.python if sys.platform == "win32" else shlex.quote(self.python)

    def worker_env_vars(self, user_env_vars: Mapping[str, str]) -> dict[str, str]:
        """Activation underneath the runtime_env's own env_vars: what the user set wins."""
        return {**self.env_vars, **user_env_vars}

    def to_json(self) -> dict[str, Any]:
        return {"python": self.python, "env_vars": self.env_vars}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Activation:
        return cls(python=str(data["python"]), env_vars=dict(data["env_vars"]))


def build_activation(
    shell_hook_json: str, prefix: Path, inherited: Mapping[str, str]
) -> Activation:
    """Turn shell-hook output into an Activation that composes with the node's variables.

    pixi reports each variable's final value, e.g. PATH = `<env>/bin:<PATH pixi inherited>`.
    A value that ends with what pixi inherited is stored as `<added>:${NAME}`, which Ray
    expands when the worker starts, so the env's directories come first and the node's
    own PATH (as the raylet has it) follows. Variables activation left as they were are
    dropped.
    """
    data = json.loads(shell_hook_json)
    variables = data.get("environment_variables")
    if not isinstance(variables, dict):
        raise ValueError("pixi shell-hook --json printed no 'environment_variables' table")
    env_vars: dict[str, str] = {}
    for name, value in variables.items():
        if not _VAR_NAME.match(name) or not isinstance(value, str):
            continue
        before = inherited.get(name)
        if value == before:
            continue
        if before and value.endswith(before) and value != before:
            added = value[: -len(before)]
            sep = added[-1:] if added[-1:] in (":", ";") else ""
            if sep:
                env_vars[name] = f"{added[:-1]}{sep}${{{name}}}"
                continue
        env_vars[name] = value
    return Activation(python=str(env_python(prefix)), env_vars=dict(sorted(env_vars.items())))
