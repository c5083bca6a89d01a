"""The plugin imports in a runtime_env agent on every supported Python with nothing but
ray[default]'s dependencies and tomli-w, as a cluster's Ray image would have it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from support import REPO, persistent_cache

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
