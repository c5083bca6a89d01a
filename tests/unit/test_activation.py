"""Activation captured at install starts workers with the env's python and variables,
composed with the node's PATH at worker start and quoted for Ray's `bash -c`."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from ray_pixi.activation import Activation, build_activation

NODE = {"PATH": "/usr/bin:/bin", "HOME": "/home/ray", "LD_LIBRARY_PATH": "/opt/lib"}


def hook(**variables: str) -> str:
    return json.dumps({"environment_variables": variables, "activation_scripts": []})


def test_path_like_values_keep_the_node_value_as_a_reference() -> None:
    a = build_activation(hook(PATH="/s/env/bin:/usr/bin:/bin", HOME="/home/ray",
                              LD_LIBRARY_PATH="/s/env/lib:/opt/lib", CONDA_PREFIX="/s/env"),
                         Path("/s/env"), NODE)
    assert a.env_vars == {"CONDA_PREFIX": "/s/env", "PATH": "/s/env/bin:${PATH}",
                          "LD_LIBRARY_PATH": "/s/env/lib:${LD_LIBRARY_PATH}"}
    assert a.python == "/s/env/bin/python"


def test_a_replaced_value_is_kept_verbatim() -> None:
    a = build_activation(hook(PATH="/only/this"), Path("/e"), NODE)
    assert a.env_vars["PATH"] == "/only/this"


def test_py_executable_is_quoted_against_shell_injection(tmp_path: Path) -> None:
    evil = tmp_path / "store $(touch pwned) dir" / "bin" / "python"
    a = Activation(python=str(evil))
    # Ray runs: bash -c "<prefix> exec <py_executable> <args>"
    out = subprocess.run(["bash", "-c", f"echo {a.py_executable()}"], capture_output=True,
                         text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == str(evil)
    assert not (tmp_path / "pwned").exists()
    assert shlex.split(a.py_executable()) == [str(evil)]


def test_user_env_vars_win_over_activation() -> None:
    a = Activation(python="/e/bin/python", env_vars={"PATH": "/e/bin:${PATH}", "FOO": "env"})
    assert a.worker_env_vars({"FOO": "user"}) == {"PATH": "/e/bin:${PATH}", "FOO": "user"}


def test_activation_round_trips_through_json() -> None:
    a = Activation(python="/e/bin/python", env_vars={"A": "1"})
    assert Activation.from_json(json.loads(json.dumps(a.to_json()))) == a
