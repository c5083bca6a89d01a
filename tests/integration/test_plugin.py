"""The plugin as Ray's agent drives it, in-process, with real pixi: what it books in Ray's
URI cache, what it deletes and keeps, how it stays responsive while other processes hold
the store's locks, and how a pinned pixi rescues a node whose own pixi is broken."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray._private.runtime_env.context import RuntimeEnvContext

from projects import manifest_text, write_locked
from ray_pixi import PixiSpecError, pixi
from ray_pixi.errors import PixiNotFoundError
from ray_pixi.plugin import PixiPlugin
from ray_pixi.settings import InvalidSettings
from ray_pixi.store import Store
from support import hold_flock, installs

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
SPEC = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}
OTHER = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.6.0"})}


def setup(plugin: PixiPlugin, runtime_env: dict) -> tuple[list[str], float, RuntimeEnvContext]:
    """One pass of Ray's per-plugin pipeline: validate, get_uris, create, modify_context."""
    plugin.validate(runtime_env)
    uris = plugin.get_uris(runtime_env)
    context = RuntimeEnvContext(env_vars={"MINE": "1", "PATH": "/user/bin:${PATH}"})
    size = asyncio.run(plugin.create(uris[0], runtime_env, context))
    plugin.modify_context(uris, runtime_env, context)
    return uris, size, context


def key_of(context: RuntimeEnvContext) -> str:
    return Path(shlex.split(context.py_executable)[0]).parents[4].name


def test_each_byte_is_booked_once_and_freed_once(node_env: Path) -> None:
    plugin = PixiPlugin()
    uri = plugin.get_uris(SPEC)[0]

    async def two_setups() -> list[float]:
        ctx = RuntimeEnvContext()
        return list(await asyncio.gather(plugin.create(uri, SPEC, ctx),
                                         plugin.create(uri, SPEC, ctx)))

    sizes = asyncio.run(two_setups())
    assert sorted(sizes)[0] == 0 and sorted(sizes)[1] > 1_000_000
    assert installs(node_env) == 1
    assert plugin.delete_uri(uri) == max(sizes)
    assert not any(node_env.glob("envs/*.json"))
    assert plugin.delete_uri(uri) == 0  # already gone: no error, nothing booked


def test_an_env_another_agent_uses_is_kept_on_disk(node_env: Path) -> None:
    first, second = PixiPlugin(), PixiPlugin()  # two agents sharing one store
    uris, size, _ = setup(first, SPEC)
    assert setup(second, SPEC)[1] == size
    assert first.delete_uri(uris[0]) == size  # booked bytes leave first's cache...
    assert len(list(node_env.glob("envs/*.json"))) == 1  # ...but second still uses the env
    assert second.delete_uri(uris[0]) == size
    assert not any(node_env.glob("envs/*.json"))


def test_workers_get_the_quoted_env_python_under_the_users_env_vars(node_env: Path) -> None:
    _, _, context = setup(PixiPlugin(), SPEC)
    [python] = shlex.split(context.py_executable)
    assert python.startswith(str(node_env / "envs")) and python.endswith("/bin/python")
    assert context.env_vars["MINE"] == "1"
    assert context.env_vars["PATH"] == "/user/bin:${PATH}"  # the user's value wins
    assert context.env_vars["PIXI_ENVIRONMENT_NAME"] == "default"


def test_a_raw_spec_keeps_the_environment_a_pixi_spec_on_the_same_files_is_evicted_from(
    node_env: Path, tmp_path: Path, pixi_node_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pixi("pixi.toml", include=[])` and `{"pixi": "pixi.toml"}` name the same project:
    two URIs, one environment, deleted only when neither is in use."""
    project = tmp_path / "proj"
    write_locked(project / "pixi.toml", manifest_text("p", pypi={"pyjokes": "==0.8.3"}),
                 pixi_node_env)
    monkeypatch.setenv("RAY_RUNTIME_ENV_CREATE_WORKING_DIR", str(project))
    helper = {"working_dir": str(project), "pixi": pixi("pixi.toml", include=[],
                                                        working_dir=project)}
    raw = {"working_dir": str(project), "pixi": "pixi.toml"}
    plugin = PixiPlugin()
    helper_uris, size, helper_ctx = setup(plugin, helper)
    raw_uris, raw_size, raw_ctx = setup(plugin, raw)
    assert helper_uris != raw_uris and raw_size == 0  # one environment, booked once
    assert helper_ctx.py_executable == raw_ctx.py_executable
    key = key_of(raw_ctx)
    assert plugin.delete_uri(helper_uris[0]) == size
    assert (node_env / "envs" / f"{key}.json").is_file()  # the raw spec still holds it
    assert plugin.delete_uri(raw_uris[0]) == 0
    assert not (node_env / "envs" / f"{key}.json").exists()


def test_uris_stay_the_same_when_the_nodes_pixi_changes(
    node_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray asks get_uris at a worker's start and again at its exit."""
    plugin = PixiPlugin()
    before = plugin.get_uris(SPEC)
    monkeypatch.setenv("RAY_PIXI_EXE", str(tmp_path / "gone"))
    assert plugin.get_uris(SPEC) == before


def test_a_bad_field_is_reported_by_validate_and_get_uris_does_not_raise(
    node_env: Path,
) -> None:
    bad = {"pixi": {"pypi_dependencies": {"six": 5}}}
    plugin = PixiPlugin()
    assert len(plugin.get_uris(bad)) == 1
    with pytest.raises(PixiSpecError, match=r"\['pypi_dependencies'\]\['six'\] must be"):
        plugin.validate(bad)


@pytest.fixture
def pixi_release_mirror(tmp_path: Path, pixi_node_env) -> Iterator[str]:
    """A loopback mirror of pixi's releases holding the session's real pixi as the
    v0.77.0 linux-64 asset and its published sha256 (as RAY_PIXI_DOWNLOAD_URL expects)."""
    root = tmp_path / "releases"
    (root / "v0.77.0").mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(pixi_node_env["RAY_PIXI_EXE"], arcname="pixi")
    asset = root / "v0.77.0" / "pixi-x86_64-unknown-linux-musl.tar.gz"
    asset.write_bytes(buffer.getvalue())
    (root / "v0.77.0" / f"{asset.name}.sha256").write_text(
        f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {asset.name}\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("node_pixi", ["missing", "broken", "too old"])
def test_a_pinned_pixi_rescues_a_node_whose_own_pixi_is(
    node_pixi: str, node_env: Path, tmp_path: Path, pixi_release_mirror: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "pixi"
    fake.parent.mkdir()
    if node_pixi == "missing":
        monkeypatch.delenv("RAY_PIXI_EXE")
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
    else:
        body = "exit 3" if node_pixi == "broken" else 'echo "pixi 0.30.1"'
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
        monkeypatch.setenv("RAY_PIXI_EXE", str(fake))
    monkeypatch.setenv("RAY_PIXI_DOWNLOAD_URL", pixi_release_mirror)
    with pytest.raises(PixiNotFoundError):  # unpinned, the node's own pixi is no good
        setup(PixiPlugin(), SPEC)
    runtime_env = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"},
                                pixi_version="0.77.0")}
    _, _, context = setup(PixiPlugin(), runtime_env)
    fetched = node_env / "pixi" / "0.77.0" / "pixi"
    assert fetched.read_bytes() == Path(os.environ.get("RAY_PIXI_TEST_PIXI") or
                                        fetched).read_bytes()
    assert subprocess.run([str(fetched), "--version"], capture_output=True,
                          text=True).stdout.strip() == "pixi 0.77.0"
    assert Path(shlex.split(context.py_executable)[0]).is_file()


def test_a_bad_node_pin_is_reported_with_its_value(node_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_PIXI_PIXI_VERSION", "v0.77")
    with pytest.raises(InvalidSettings, match=r"^Invalid RAY_PIXI_PIXI_VERSION='v0.77': "):
        setup(PixiPlugin(), SPEC)


def test_the_agents_loop_serves_other_setups_while_a_lock_is_held_elsewhere(
    node_env: Path,
) -> None:
    """Setup A waits on an install lock another agent holds, and setup B on a use lock a
    deletion (`ray-pixi envs rm`) holds; meanwhile setup C of an installed environment
    completes on the same event loop."""
    plugin = PixiPlugin()
    setup(plugin, SPEC)  # C's environment is installed
    third = {"pixi": pixi(pypi_dependencies={"six": "==1.16.0"})}
    same_as_spec = {"pixi": {"pypi_dependencies": {"pyjokes": "==0.8.3"}}}  # another URI
    store = Store(node_env)

    async def scenario() -> None:
        node = plugin._impl()
        install_holder = hold_flock(store.install_lock(await node.key_for(OTHER)).path)
        delete_holder = hold_flock(store.use_lock(await node.key_for(third)).path)
        a = asyncio.ensure_future(plugin.create(plugin.get_uris(OTHER)[0], OTHER,
                                                RuntimeEnvContext()))
        b = asyncio.ensure_future(plugin.create(plugin.get_uris(third)[0], third,
                                                RuntimeEnvContext()))
        c = plugin.create(plugin.get_uris(same_as_spec)[0], same_as_spec, RuntimeEnvContext())
        assert await asyncio.wait_for(c, 60) == 0  # booked by SPEC's URI already
        assert not a.done() and not b.done()
        install_holder.communicate("")
        delete_holder.communicate("")
        await asyncio.wait_for(asyncio.gather(a, b), 600)

    asyncio.run(scenario())
    assert installs(node_env) == 3


def test_the_store_cap_counts_environments_of_earlier_sessions(
    node_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier session's agent installed it, then ended: nothing holds it any more.
    earlier = subprocess.run([sys.executable, str(HERE / "agent_child.py"), json.dumps(OTHER)],
                             capture_output=True, text=True, check=True)
    old_key = Path(shlex.split(earlier.stdout.strip())[0]).parents[4].name
    monkeypatch.setenv("RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB", "0.000001")
    now = PixiPlugin()
    _, _, new = setup(now, SPEC)
    deadline = time.monotonic() + 60
    while (node_env / "envs" / f"{old_key}.json").exists():
        assert time.monotonic() < deadline, "the earlier session's environment was kept"
        time.sleep(0.05)  # poll: the cap is enforced off the agent's loop
    assert (node_env / "envs" / f"{key_of(new)}.json").is_file()  # held: never evicted


def test_every_setup_records_a_use(node_env: Path) -> None:
    plugin = PixiPlugin()
    uris, _, context = setup(plugin, SPEC)
    marker = node_env / "envs" / f"{key_of(context)}.json"
    os.utime(marker, (1, 1))
    # A minute later: the next setup writes the use.
    plugin._impl()._held[key_of(context)].touched -= 60
    plugin.modify_context(uris, SPEC, RuntimeEnvContext())
    deadline = time.monotonic() + 10
    while marker.stat().st_mtime < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)  # the touch runs in a thread
    assert json.loads(marker.read_text())["key"] == key_of(context)
