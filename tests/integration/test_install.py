"""Installing into the store with the FAKE pixi and real PyPI packages, without Ray: one
install however many ask, nothing trusted after a crash or cancellation, and errors that
carry their remedy."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from ray_pixi.cluster import ClusterInfo
from ray_pixi.errors import PixiInstallError, PixiVersionMismatchError
from ray_pixi.install import install_environment
from ray_pixi.key import build_env_key
from ray_pixi.pixi_cli import find_pixi_on_node
from ray_pixi.spec import parse_spec
from ray_pixi.store import Store
from support import install_count

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
LOG = logging.getLogger("test")
CLUSTER = ClusterInfo.current()
SIX = {"pypi_dependencies": {"six": "==1.16.0"}}


def install(store: Store, raw: dict, log_dir: Path):
    spec = parse_spec(raw)
    pixi = find_pixi_on_node()
    assert pixi is not None
    key = build_env_key(spec, CLUSTER, pixi.version_str)
    return key, install_environment(key=key, spec=spec, cluster=CLUSTER, store=store, pixi=pixi,
                                    log_dir=log_dir, logger=LOG)


def run_python(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_inline_env_is_installed_once_and_imports_its_packages(
    fake_pixi_env: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    key, first = install(store, SIX, tmp_path / "logs")
    env, installed = asyncio.run(first)
    assert installed
    assert run_python(env.activation.python, "import six; print(six.__version__)") == "1.16.0"
    assert env.activation.python.startswith(str(store.workspace(key)))
    assert (env.python_version, env.ray_version) == (CLUSTER.python_version, CLUSTER.ray_version)
    _, again = install(store, SIX, tmp_path / "logs")
    assert asyncio.run(again)[1] is False
    assert install_count(fake_pixi_env) == 1
    logs = list((tmp_path / "logs" / "pixi").glob(f"install-{key}-*.log"))
    assert len(logs) == 1 and "/pixi install --manifest-path" in logs[0].read_text()


def test_sixteen_concurrent_setups_in_one_agent_install_once(
    fake_pixi_env: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")

    async def many() -> list[bool]:
        setups = [install(store, SIX, tmp_path / "l")[1] for _ in range(16)]
        results = await asyncio.gather(*setups)
        return [installed for _, installed in results]

    assert sorted(asyncio.run(many())) == [False] * 15 + [True]
    assert install_count(fake_pixi_env) == 1


def test_two_processes_sharing_a_store_install_once(fake_pixi_env: Path, tmp_path: Path) -> None:
    args = [sys.executable, str(HERE / "install_child.py"), str(tmp_path / "store"),
            str(tmp_path / "logs"), json.dumps(SIX)]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(c.communicate()[0]) for c in children]
    assert sorted(r["installed"] for r in results) == [False, True]
    assert results[0]["python"] == results[1]["python"]
    assert install_count(fake_pixi_env) == 1


def test_an_install_killed_mid_way_is_swept_and_never_used(
    fake_pixi_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = tmp_path / "hung.pid"
    monkeypatch.setenv("FAKE_PIXI_HANG_INSTALL", str(hung))
    monkeypatch.setenv("FAKE_PIXI_FAULT_ONCE", str(tmp_path / "faulted"))
    child = subprocess.Popen([sys.executable, str(HERE / "install_child.py"),
                              str(tmp_path / "store"), str(tmp_path / "logs"), json.dumps(SIX)],
                             start_new_session=True)
    while not hung.exists():  # the fake writes its pid once it is mid-install
        assert child.poll() is None, "the install child ended before pixi hung"
        time.sleep(0.05)  # poll for the file the child creates
    store = Store(tmp_path / "store")
    [partial] = [p for p in store.envs.iterdir() if p.is_dir()]
    os.killpg(child.pid, signal.SIGKILL)  # the whole agent dies, pixi with it
    child.wait()
    assert store.read_ready(partial.name) is None
    assert store.sweep() == [partial.name]
    key, again = install(store, SIX, tmp_path / "logs")
    env, installed = asyncio.run(again)
    assert installed and key == partial.name
    assert run_python(env.activation.python, "import six; print(six.__version__)") == "1.16.0"


def test_a_cancelled_install_leaves_nothing(
    fake_pixi_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = tmp_path / "hung.pid"
    monkeypatch.setenv("FAKE_PIXI_HANG_INSTALL", str(hung))
    store = Store(tmp_path / "store")

    async def scenario() -> str:
        key, coro = install(store, SIX, tmp_path / "logs")
        task = asyncio.ensure_future(coro)
        while not hung.exists():
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return key

    key = asyncio.run(scenario())
    assert store.read_ready(key) is None and not store.workspace(key).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(int(hung.read_text()), 0)


def test_a_failed_install_reports_its_log(
    fake_pixi_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIXI_FAIL_INSTALL", "failed to fetch repodata: connection reset")
    store = Store(tmp_path / "store")
    key, coro = install(store, SIX, tmp_path / "logs")
    with pytest.raises(PixiInstallError) as e:
        asyncio.run(coro)
    assert "exited with code 1" in str(e.value)
    assert "failed to fetch repodata: connection reset" in str(e.value)
    assert e.value.log_path and Path(e.value.log_path).is_file()
    assert not store.workspace(key).exists()


def manifest(tmp_path: Path, python: str, with_ray: bool) -> dict:
    ray = (f'ray = {{ version = "=={CLUSTER.ray_version}", extras = ["default"] }}\n'
           if with_ray else "")
    text = (f'[workspace]\nname = "m"\nchannels = ["conda-forge"]\n'
            f'platforms = ["{CLUSTER.platform}"]\n'
            f'[dependencies]\npython = "{python}"\n[pypi-dependencies]\nsix = "*"\n{ray}')
    return {"manifest": "pixi.toml", "manifest_content": text, "locked": False}


def test_an_env_without_ray_is_refused_with_the_line_to_add(
    fake_pixi_env: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    key, coro = install(store, manifest(tmp_path, f"=={CLUSTER.python_version}", False),
                        tmp_path / "logs")
    with pytest.raises(PixiVersionMismatchError) as e:
        asyncio.run(coro)
    line = f'ray = {{ version = "=={CLUSTER.ray_version}", extras = ["default"] }}'
    assert f"it has Ray (not installed) but the cluster runs {CLUSTER.ray_version}" in str(e.value)
    assert f"Add `{line}` under [pypi-dependencies]" in str(e.value)
    tomllib.loads(line)  # the suggested line is valid TOML
    _, retry = install(store, manifest(tmp_path, f"=={CLUSTER.python_version}", False),
                       tmp_path / "logs")
    with pytest.raises(PixiVersionMismatchError):
        asyncio.run(retry)
    assert install_count(fake_pixi_env) == 1  # the deterministic failure is not retried
    assert store.read_ready(key) is None


def test_an_env_with_another_python_is_refused_with_the_pin_to_add(
    fake_pixi_env: Path, tmp_path: Path
) -> None:
    other = next(v for v in ("3.12", "3.10", "3.13") if not CLUSTER.python_version.startswith(v))
    store = Store(tmp_path / "store")
    _, coro = install(store, manifest(tmp_path, f"{other}.*", False), tmp_path / "logs")
    with pytest.raises(PixiVersionMismatchError) as e:
        asyncio.run(coro)
    assert f"it runs Python {other}." in str(e.value)
    assert f'Add `python = "=={CLUSTER.python_version}"` under [dependencies]' in str(e.value)


def test_a_stale_lock_points_at_pixi_lock(fake_pixi_env: Path, tmp_path: Path) -> None:
    raw = manifest(tmp_path, f"=={CLUSTER.python_version}", True)
    raw.pop("locked")
    raw["lock_content"] = json.dumps({"version": 6, "environments": {}})
    store = Store(tmp_path / "store")
    _, coro = install(store, raw, tmp_path / "logs")
    with pytest.raises(PixiInstallError) as e:
        asyncio.run(coro)
    assert "lock file not up-to-date with the workspace" in str(e.value)
    assert "Run `pixi lock --manifest-path pixi.toml`" in str(e.value)
