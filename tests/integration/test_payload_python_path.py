"""A Ray node set up as the add-on sets up a Ray container, on a local cluster: the payload
installed by `ray-pixi-payload add` onto a volume directory, and the Ray container's env vars
exactly as the mutation writes them (its /ray-pixi paths mapped to that directory), on a Python
that, like Ray's images (conda's, at /home/ray/anaconda3), is no isolated venv and has Ray but
no ray-pixi and no tomli-w. The node also has an image-style PYTHONPATH with a module on it.

Shown for both ways the payload reaches the agent: Python's user site (PYTHONUSERBASE, the
default) and PYTHONPATH (for images whose Python ignores the user site, declared with the
ray-pixi.io/image-pythonpath annotation):

- the image's own module imports in a plain task: its PYTHONPATH survived;
- the runtime_env agent imported the plugin from the payload (the pixi task ran at all);
- a task inside a pixi environment has no payload entry on sys.path and cannot import
  ray_pixi, while the image's PYTHONPATH stays as on a node without ray-pixi.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import ray
import tomli_w
import yaml

from support import REPO, persistent_cache, stop_cluster_under

pytestmark = pytest.mark.integration
IMAGE_PYTHONPATH = "/opt/image-code"
CLUSTER = """
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: local, namespace: ml, labels: {ray-pixi.io/enabled: "true"}}
spec:
  rayVersion: "2.60.0"
  headGroupSpec:
    rayStartParams: {}
    template:
      spec:
        containers: [{name: ray-head, image: rayproject/ray:2.60.0}]
"""
DRIVER = """
import json, os, sys
import ray

@ray.remote
def look():
    import sys
    seen = {"sys_path": sys.path, "prefix": sys.prefix,
            "user_base": os.environ.get("PYTHONUSERBASE")}
    try:
        import image_code
        seen["image_code"] = image_code.WHERE
    except ImportError as e:
        seen["image_code"] = f"missing: {e}"
    try:
        import ray_pixi
        seen["ray_pixi"] = ray_pixi.__file__
    except ImportError:
        seen["ray_pixi"] = None
    return seen

ray.init(address=sys.argv[1])
plain = ray.get(look.remote())
inside = ray.get(look.options(runtime_env={"pixi": json.loads(sys.argv[2])}).remote())
print("RESULT " + json.dumps({"plain": plain, "pixi": inside}))
"""


def node_python() -> Path:
    """A venv that sees the user site (system site packages on), with Ray and its
    dependencies only; built once per machine."""
    venv = persistent_cache("user-site-node") / f"ray-{ray.__version__}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        uv = Path(sys.executable).parent / "uv"
        env = {**os.environ, "UV_CACHE_DIR": str(persistent_cache("uv"))}
        env.pop("VIRTUAL_ENV", None)
        subprocess.run([uv, "venv", "--quiet", "--system-site-packages", "--python",
                        Path(sys.base_prefix) / "bin" / "python3", venv], check=True, env=env)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", python,
                        f"ray[default]=={ray.__version__}"], check=True, env=env)
        (venv / ".ready").touch()
    probe = subprocess.run(
        [python, "-c", "import site, importlib.util as u; print(site.ENABLE_USER_SITE, "
         "u.find_spec('ray_pixi') is None, u.find_spec('tomli_w') is None)"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert probe.stdout.split() == ["True", "True", "True"], probe.stdout
    return python


def payload_source(root: Path, pixi: Path) -> Path:
    """The image's /opt/ray-pixi/payload: bin/pixi, and python/ray_pixi with tomli-w
    vendored inside it (as images/Dockerfile lays it out)."""
    source = root / "source"
    python = source / "python"
    uv = Path(sys.executable).parent / "uv"
    env = {**os.environ, "UV_CACHE_DIR": str(persistent_cache("uv"))}
    subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--target", python, REPO],
                   check=True, env=env)  # fmt: skip
    shutil.copytree(Path(tomli_w.__file__).parent, python / "ray_pixi" / "_vendor" / "tomli_w",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.rmtree(python / "bin", ignore_errors=True)
    (source / "bin").mkdir()
    shutil.copy2(pixi, source / "bin" / "pixi")
    return source


def ray_container_env(annotations: dict[str, str]) -> dict[str, str]:
    """containers[0]'s env as the mutation writes it for a cluster with `annotations`."""
    from ray_pixi_operator import Settings, prepare

    body = yaml.safe_load(CLUSTER)
    body["metadata"]["annotations"] = annotations
    settings = Settings.from_env({"RAY_PIXI_PAYLOAD_IMAGE": "ghcr.io/example/ray-pixi:0.2.0"})
    pod = prepare(body, settings).body["spec"]["headGroupSpec"]["template"]["spec"]
    return {e["name"]: e["value"] for e in pod["containers"][0]["env"]}


def mapped(env: Mapping[str, str], volume: Path, image_code: Path) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        value = value.replace("/ray-pixi/", f"{volume}/").replace(IMAGE_PYTHONPATH, str(image_code))
        out[name] = value
    return out


@pytest.mark.parametrize(
    "annotations",
    [{}, {"ray-pixi.io/image-pythonpath": IMAGE_PYTHONPATH}],
    ids=["user-site", "declared-pythonpath"],
)
def test_pixi_tasks_never_see_the_payload_and_the_image_pythonpath_survives(
    annotations: dict[str, str], tmp_path: Path, pixi_node_env: Mapping[str, str]
) -> None:
    python = node_python()
    volume = tmp_path / "ray-pixi"
    volume.mkdir(mode=0o777)
    container = ray_container_env(annotations)
    payload = container["RAY_PIXI_EXE"].removesuffix("/bin/pixi")
    source = payload_source(tmp_path, Path(pixi_node_env["RAY_PIXI_EXE"]))
    added = subprocess.run(
        [sys.executable, "-m", "ray_pixi_operator.payload", "add",
         payload.replace("/ray-pixi/", f"{volume}/"), "--source", source],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "added python, lib, bin, x86_64" in added.stdout
    image_code = tmp_path / "image-code"
    image_code.mkdir()
    (image_code / "image_code.py").write_text("WHERE = 'the image'\n")

    node = {
        # The world's pixi configuration, proxy and package cache (not the pod's fresh one).
        **pixi_node_env,
        **mapped(container, volume, image_code),
        "PIXI_CACHE_DIR": pixi_node_env["PIXI_CACHE_DIR"],
        "HOME": str(tmp_path / "home"),
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED": "1",
        "RAY_AUTH_MODE": "disabled",  # this test is not about token auth (Ray 2.59+)
    }
    if "PYTHONPATH" not in container:  # the image's ENV PYTHONPATH, as docker sets it
        node["PYTHONPATH"] = str(image_code)
    if annotations:
        assert node["PYTHONPATH"].split(":") == [f"{volume}/{payload[10:]}/python",
                                                 str(image_code)]  # fmt: skip
    else:
        assert node["PYTHONUSERBASE"] == payload.replace("/ray-pixi/", f"{volume}/")
    temp = Path(tempfile.mkdtemp(prefix="rp-us-", dir="/tmp"))
    started = subprocess.run(
        [python.parent / "ray", "start", "--head", "--port", "0", "--num-cpus", "1",
         "--temp-dir", temp, "--include-dashboard", "false"],
        env=node, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        address = re.search(r"ray start --address='([^']+)'", started.stdout)[1]  # type: ignore[index]
        spec = {"dependencies": {"six": "*"}}
        done = subprocess.run([python, "-c", DRIVER, address, json.dumps(spec)], env=node,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        seen: dict[str, Any] = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    finally:
        stop_cluster_under(temp)  # never `ray stop`: it stops every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)

    payload_dir = Path(payload.replace("/ray-pixi/", f"{volume}/")).resolve()
    plain, inside = seen["plain"], seen["pixi"]
    assert plain["image_code"] == "the image"
    assert Path(plain["ray_pixi"]).resolve().is_relative_to(payload_dir)  # as the agent has it
    assert inside["prefix"].startswith(str(volume / "store"))
    assert inside["ray_pixi"] is None
    assert not [p for p in inside["sys_path"] if p and Path(p).resolve().is_relative_to(
        payload_dir)], inside["sys_path"]  # fmt: skip
    assert inside["image_code"] == "the image"  # its PYTHONPATH, as without ray-pixi
    if not annotations:
        assert inside["user_base"] == ""  # Python's default user base, as without ray-pixi
