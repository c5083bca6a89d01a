"""What a worker in a pixi environment inherits: activation underneath the user's
env_vars, and no trace of the plugin's payload on its PYTHONPATH (the KubeRay add-on puts
it there for the runtime_env agent only)."""

from __future__ import annotations

import os

from ray_pixi.activation import Activation
from ray_pixi.workers import payload_dir, worker_env_vars

ACTIVATION = Activation("/store/envs/k/.pixi/envs/default/bin/python",
                        {"PATH": "/store/envs/k/.pixi/envs/default/bin:${PATH}", "A": "act"})


def test_the_users_env_vars_win_over_activation() -> None:
    env = worker_env_vars(ACTIVATION, {"A": "user"}, inherited={})
    assert env == {"PATH": ACTIVATION.env_vars["PATH"], "A": "user"}


def test_the_payload_is_dropped_from_an_inherited_pythonpath() -> None:
    image_dir = "/opt/app/lib"
    inherited = {"PYTHONPATH": os.pathsep.join([str(payload_dir()), image_dir])}
    env = worker_env_vars(ACTIVATION, {}, inherited=inherited)
    assert env["PYTHONPATH"] == image_dir


def test_a_pythonpath_without_the_payload_is_left_to_the_worker() -> None:
    env = worker_env_vars(ACTIVATION, {}, inherited={"PYTHONPATH": "/opt/app/lib"})
    assert "PYTHONPATH" not in env  # inherited unchanged


def test_a_pythonpath_the_user_sets_wins() -> None:
    env = worker_env_vars(ACTIVATION, {"PYTHONPATH": "/mine"},
                          inherited={"PYTHONPATH": str(payload_dir())})
    assert env["PYTHONPATH"] == "/mine"
