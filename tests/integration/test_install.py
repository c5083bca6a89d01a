"""Installing into the store with real pixi, without Ray: one install however many ask,
nothing trusted after a crash or cancellation, and errors that carry their remedy."""

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
import ray

from projects import manifest_text, pixi_lock
from ray_pixi.cluster import ClusterInfo
from ray_pixi.errors import PixiInstallError, PixiVersionMismatchError
from ray_pixi.install import install_environment
from ray_pixi.key import build_env_key
from ray_pixi.pixi_cli import find_pixi_on_node
from ray_pixi.spec import parse_spec
from ray_pixi.store import Store
from support import install_logs, installs

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
LOG = logging.getLogger("test")
CLUSTER = ClusterInfo.current()
SIX = {"pypi_dependencies": {"six": "==1.16.0"}}


@pytest.fixture
def store(node_env: Path) -> Store:
    s = Store(node_env)
    s.ensure()
    return s


def install(store: Store, raw: dict):  # type: ignore[no-untyped-def]
    spec = parse_spec(raw)
    pixi = find_pixi_on_node()
    assert pixi is not None
    key = build_env_key(spec, CLUSTER, pixi.version_str)
    return key, install_environment(key=key, spec=spec, cluster=CLUSTER, store=store, pixi=pixi,
                                    logger=LOG)


def run_python(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_inline_env_is_installed_once_and_imports_its_packages(store: Store) -> None:
    key, first = install(store, SIX)
    env, installed = asyncio.run(first)
    assert installed
    assert run_python(env.activation.python, "import six; print(six.__version__)") == "1.16.0"
    assert env.activation.python.startswith(str(store.workspace(key)))
    assert (env.python_version, env.ray_version) == (CLUSTER.python_version, CLUSTER.ray_version)
    _, again = install(store, SIX)
    assert asyncio.run(again)[1] is False
    [log] = install_logs(store.root, key)
    assert "pixi install --manifest-path" in log.read_text() and installs(store.root) == 1


def test_the_environment_is_fully_byte_compiled_at_install(store: Store) -> None:
    """Workers that may not write .pyc (PYTHONDONTWRITEBYTECODE, a read-only store) find
    every module of Ray compiled."""
    _, coro = install(store, SIX)
    env, _ = asyncio.run(coro)
    site = next(Path(env.activation.python).parents[1].glob("lib/python3*/site-packages"))
    ray_sources = [p for p in (site / "ray").rglob("*.py") if "__pycache__" not in p.parts]
    tag = sys.implementation.cache_tag
    missing = [p for p in ray_sources
               if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").is_file()]
    assert len(ray_sources) > 1000 and len(missing) < len(ray_sources) // 100, missing[:5]


def test_sixteen_concurrent_setups_in_one_agent_install_once(store: Store) -> None:
    async def many() -> list[bool]:
        setups = [install(store, SIX)[1] for _ in range(16)]
        results = await asyncio.gather(*setups)
        return [installed for _, installed in results]

    assert sorted(asyncio.run(many())) == [False] * 15 + [True]
    assert installs(store.root) == 1


def child(store: Store, raw: dict, **popen: object) -> subprocess.Popen[str]:
    """One install in another process, as a second Ray agent sharing the store would."""
    return subprocess.Popen([sys.executable, str(HERE / "install_child.py"), str(store.root),
                             json.dumps(raw)], stdout=subprocess.PIPE, text=True,
                            **popen)  # type: ignore[call-overload]


def test_two_processes_sharing_a_store_install_once(store: Store) -> None:
    children = [child(store, SIX) for _ in range(2)]
    results = [json.loads(c.communicate()[0]) for c in children]
    assert sorted(r["installed"] for r in results) == [False, True]
    assert results[0]["python"] == results[1]["python"]
    assert installs(store.root) == 1


def pixi_children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and len(argv) > 1 and argv[1] == b"install":
            found.append(int(entry.name))
    return found


def test_an_agent_killed_mid_install_takes_pixi_with_it_and_nothing_is_trusted(
    store: Store, pixi_mirror
) -> None:
    """SIGKILL the installing process while pixi waits on the site's mirror: the kernel
    kills pixi too, the unmarked workspace is swept, and a new install starts afresh."""
    raw = {"pypi_dependencies": {"six": "==1.16.0"}, "dependencies": {
        "ray-pixi-test-activation": "*"}}
    with pixi_mirror.stall("/conda-forge/*/repodata*") as stall:
        agent = child(store, raw)
        assert stall.wait_hit(timeout=120)
        deadline = time.monotonic() + 60
        while not (pixis := pixi_children_of(agent.pid)):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.05)  # poll /proc for the pixi the stall holds
        [partial] = [p for p in store.envs.iterdir() if p.is_dir()]
        os.kill(agent.pid, signal.SIGKILL)  # the agent dies; nothing kills pixi's group
        agent.wait()
        while Path(f"/proc/{pixis[0]}").exists() and \
                Path(f"/proc/{pixis[0]}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "pixi outlived the agent that started it"
            time.sleep(0.05)  # poll until the parent-death signal has killed it
    pixi_mirror.unstall(stall)
    assert store.read_ready(partial.name) is None
    assert store.sweep() == [partial.name]
    key, again = install(store, raw)
    env, installed = asyncio.run(again)
    assert installed and key == partial.name
    assert run_python(env.activation.python, "import six; print(six.__version__)") == "1.16.0"


def test_a_cancelled_install_leaves_nothing(store: Store, pixi_mirror) -> None:
    raw = {"pypi_dependencies": {"six": "==1.16.0"}, "dependencies": {
        "ray-pixi-test-activation": "*"}}

    async def scenario() -> tuple[str, list[int]]:
        key, coro = install(store, raw)
        task = asyncio.ensure_future(coro)
        deadline = time.monotonic() + 120
        while not (pixis := pixi_children_of(os.getpid())):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return key, pixis

    with pixi_mirror.stall("/conda-forge/*/repodata*"):
        key, pixis = asyncio.run(scenario())
    assert store.read_ready(key) is None and not store.workspace(key).exists()
    assert not any(Path(f"/proc/{p}").exists() for p in pixis)


def test_a_failed_install_reports_pixis_error_and_its_log(store: Store) -> None:
    key, coro = install(store, {"dependencies": {"no-such-package": "*"}})
    with pytest.raises(PixiInstallError) as e:
        asyncio.run(coro)
    assert "exited with code 1" in str(e.value)
    assert "No candidates were found for no-" in str(e.value)
    assert e.value.log_path and Path(e.value.log_path).is_file()
    assert not store.workspace(key).exists()


def manifest(python: str, with_ray: bool) -> dict:
    text = manifest_text("m", pypi={"six": "*"}, python=python,
                         ray_version=ray.__version__ if with_ray else None)
    return {"manifest": "pixi.toml", "manifest_content": text, "locked": False}


def test_an_env_without_ray_is_refused_with_the_line_to_add(store: Store) -> None:
    raw = manifest(f"=={CLUSTER.python_version}", False)
    key, coro = install(store, raw)
    with pytest.raises(PixiVersionMismatchError) as e:
        asyncio.run(coro)
    line = f'ray = {{ version = "=={CLUSTER.ray_version}", extras = ["default"] }}'
    assert f"it has Ray (not installed) but the cluster runs {CLUSTER.ray_version}" in str(e.value)
    assert f"Add `{line}` under [pypi-dependencies]" in str(e.value)
    tomllib.loads(line)  # the suggested line is valid TOML
    _, retry = install(store, raw)
    with pytest.raises(PixiVersionMismatchError):
        asyncio.run(retry)
    assert len(install_logs(store.root, key)) == 1  # the deterministic failure is not retried
    assert store.read_ready(key) is None


def test_a_stale_lock_points_at_pixi_lock(store: Store, tmp_path: Path,
                                          node_env: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pixi.toml").write_text(manifest_text("m", pypi={"six": "==1.16.0"}))
    pixi_lock(project / "pixi.toml", dict(os.environ))
    # Edit the manifest after locking, as a user who forgot `pixi lock` does.
    edited = manifest_text("m", pypi={"six": "==1.16.0", "pyjokes": "*"})
    raw = {"manifest": "pixi.toml", "manifest_content": edited,
           "lock_content": (project / "pixi.lock").read_text()}
    _, coro = install(store, raw)
    with pytest.raises(PixiInstallError) as e:
        asyncio.run(coro)
    assert "lock file not up-to-date with the workspace" in str(e.value)
    assert "Run `pixi lock --manifest-path pixi.toml`" in str(e.value)



def test_a_node_without_bash_is_told_so(store: Store, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """pixi captures activation with bash; without it the install stops with that reason
    instead of pixi's "An activation error occurred: IoError(... NotFound)"."""
    empty = tmp_path / "no-bash"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # RAY_PIXI_EXE is absolute
    key, coro = install(store, {"dependencies": {"six": "*"}, "pypi_dependencies": {}})
    with pytest.raises(PixiInstallError, match="There is no bash on this node's PATH"):
        asyncio.run(coro)
    assert not store.workspace(key).exists()
