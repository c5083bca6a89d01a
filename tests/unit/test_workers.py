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


def test_the_payload_is_dropped_from_the_pythonpath_ray_composed() -> None:
    """Ray's working_dir plugin runs first and writes `<working_dir>:<node PYTHONPATH>` into
    the context's env_vars: the payload goes from that value too, the rest stays in order."""
    composed = os.pathsep.join(["/tmp/ray/session/runtime_resources/working_dir_files/x",
                                str(payload_dir()), "/opt/app/lib"])
    env = worker_env_vars(ACTIVATION, {"PYTHONPATH": composed},
                          inherited={"PYTHONPATH": str(payload_dir())})
    assert env["PYTHONPATH"] == os.pathsep.join(
        ["/tmp/ray/session/runtime_resources/working_dir_files/x", "/opt/app/lib"])


def _user_base(tmp_path, payload, minors=("3.11", "3.12")):  # type: ignore[no-untyped-def]
    """A payload's user base as ray-pixi-payload writes it: a .pth per Python minor."""
    base = tmp_path / "payloads" / "key"
    for minor in minors:
        site = base / "lib" / f"python{minor}" / "site-packages"
        site.mkdir(parents=True)
        relative = os.path.relpath(payload, site)
        (site / "ray-pixi.pth").write_text(
            f"# ray-pixi\n{relative}\nimport os, site; os.path.isdir('/x') and None\n")
    return base


def test_a_payload_user_base_is_neutralised_for_workers(tmp_path) -> None:
    """Python would add the payload's user site to a pixi environment's sys.path too: the
    worker gets an empty PYTHONUSERBASE, Python's default user base."""
    base = _user_base(tmp_path, payload_dir())
    env = worker_env_vars(ACTIVATION, {}, inherited={"PYTHONUSERBASE": str(base)})
    assert env["PYTHONUSERBASE"] == ""


def test_a_user_base_of_someone_else_is_left_alone(tmp_path) -> None:
    other = _user_base(tmp_path, tmp_path / "not-the-payload")
    env = worker_env_vars(ACTIVATION, {}, inherited={"PYTHONUSERBASE": str(other)})
    assert "PYTHONUSERBASE" not in env
    env = worker_env_vars(ACTIVATION, {}, inherited={"PYTHONUSERBASE": str(tmp_path / "none")})
    assert "PYTHONUSERBASE" not in env


def test_a_user_base_the_user_sets_wins(tmp_path) -> None:
    base = _user_base(tmp_path, payload_dir())
    env = worker_env_vars(ACTIVATION, {"PYTHONUSERBASE": "/mine"},
                          inherited={"PYTHONUSERBASE": str(base)})
    assert env["PYTHONUSERBASE"] == "/mine"
