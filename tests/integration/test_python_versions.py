"""The plugin imports in a runtime_env agent on every supported Python with nothing but
ray[default]'s dependencies and tomli-w, as a cluster's Ray image would have it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from support import REPO, persistent_cache, stop_cluster_under

pytestmark = pytest.mark.integration
PYENV = Path.home() / ".pyenv" / "versions"


def interpreter(minor: str) -> Path:
    if sys.version_info[:2] == tuple(int(x) for x in minor.split(".")):
        return Path(sys.executable)
    found = sorted(PYENV.glob(f"{minor}.*/bin/python3"))
    if not found:
        pytest.skip(f"no Python {minor} on this machine (looked in {PYENV})")
    return found[-1]


@pytest.mark.parametrize("minor", ["3.10", "3.11", "3.12", "3.13"])
def test_the_plugin_imports_with_ray_default_and_tomli_w_only(minor: str, tmp_path: Path) -> None:
    uv = Path(sys.executable).parent / "uv"
    venv = tmp_path / "agent"
    env = {**os.environ, "UV_CACHE_DIR": str(persistent_cache("uv"))}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([str(uv), "venv", "--quiet", "--python", str(interpreter(minor)), str(venv)],
                   check=True, env=env)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    f"ray[default]=={ray.__version__}", "tomli-w"], check=True, env=env)
    # The plugin's own code, without letting the installer add anything else.
    subprocess.run([str(uv), "pip", "install", "--quiet", "--no-deps", "--python",
                    str(venv / "bin" / "python"), str(REPO)], check=True, env=env)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import ray_pixi, sys\n"
         "from ray._private.runtime_env.plugin import RuntimeEnvPluginManager\n"
         "import os\n"
         "os.environ['RAY_RUNTIME_ENV_PLUGINS'] = '[{\"class\": \"ray_pixi.PixiPlugin\"}]'\n"
         "m = RuntimeEnvPluginManager()\n"
         "print(sys.version_info[:2], type(m.plugins['pixi'].class_instance).__name__)"],
        capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                             "RAY_PIXI_STORE_DIR": str(tmp_path / "store")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"({minor.replace('.', ', ')}) PixiPlugin"


# The newest Ray below the supported floor (ray_pixi.compat.MIN_RAY) that installs on Python 3.11.
OLD_RAY = "2.9.3"
DRIVER = """
import json, sys
import ray
from ray.exceptions import RuntimeEnvSetupError

@ray.remote
def plain():
    return "ran"

ray.init(address=sys.argv[1])
out = {"plain": ray.get(plain.remote()),
       "env_vars": ray.get(plain.options(runtime_env={"env_vars": {"A": "1"}}).remote())}
try:
    ray.get(plain.options(runtime_env={"pixi": {"pypi_dependencies": {"six": "*"}}}).remote())
except RuntimeEnvSetupError as e:
    out["pixi"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_a_node_with_an_old_ray_keeps_running_other_jobs(
    tmp_path: Path,
) -> None:
    """Ray imports the plugin as the KubeRay add-on delivers it (on PYTHONPATH, not
    installed) on a node with a Ray older than it supports (2.9.3): the node starts, jobs
    without pixi run, and a pixi job fails with the supported range."""
    uv = Path(sys.executable).parent / "uv"
    venv = tmp_path / "old-ray"
    env = {**os.environ, "UV_CACHE_DIR": str(persistent_cache("uv"))}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)],
                   check=True, env=env)
    # Ray 2.9's dashboard agent imports pkg_resources (setuptools), which Ray's images have
    # and a uv venv has not: without it the agent exits and takes the raylet with it.
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
                    f"ray[default]=={OLD_RAY}", "setuptools<70"], check=True, env=env)
    payload = tmp_path / "payload"
    subprocess.run([str(uv), "pip", "install", "--quiet", "--no-deps", "--target",
                    str(payload), str(REPO), "tomli-w"], check=True, env=env)
    temp = Path(tempfile.mkdtemp(prefix="rp-old-", dir="/tmp"))
    node = {"HOME": str(tmp_path), "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": str(payload), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_RUNTIME_ENV_PLUGINS": '[{"class": "ray_pixi.PixiPlugin"}]',
            "RAY_PIXI_STORE_DIR": str(tmp_path / "store")}
    ray_cli = str(venv / "bin" / "ray")
    started = subprocess.run([ray_cli, "start", "--head", "--port", "0", "--num-cpus", "1",
                              "--temp-dir", str(temp), "--include-dashboard", "false"],
                             env=node, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        address = re.search(r"ray start --address='([^']+)'", started.stdout)[1]  # type: ignore[index]
        done = subprocess.run([str(venv / "bin" / "python"), "-c", DRIVER, address], env=node,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        seen = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    finally:
        stop_cluster_under(temp)  # never `ray stop`: it stops every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)
    assert seen["plain"] == "ran" and seen["env_vars"] == "ran"
    assert "ray-pixi cannot run on this Ray node" in seen["pixi"]
    assert f"Ray {OLD_RAY} (needs >= 2.10.0)" in seen["pixi"]
    assert "Jobs without runtime_env['pixi'] are not affected" in seen["pixi"]
