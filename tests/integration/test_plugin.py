"""The plugin object as Ray's agent drives it, in-process: what it books in Ray's URI
cache, what it deletes, and how it fetches a pinned pixi."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import shlex
import tarfile
import threading
from pathlib import Path

import pytest
from ray._private.runtime_env.context import RuntimeEnvContext

from ray_pixi import pixi
from ray_pixi.plugin import PixiPlugin
from support import FAKE_PIXI, install_count

pytestmark = pytest.mark.integration
SPEC = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}


@pytest.fixture
def store(fake_pixi_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(tmp_path / "store"))
    return tmp_path / "store"


def setup(plugin: PixiPlugin, runtime_env: dict) -> tuple[list[str], float, RuntimeEnvContext]:
    """One pass of Ray's per-plugin pipeline: validate, get_uris, create, modify_context."""
    plugin.validate(runtime_env)
    uris = plugin.get_uris(runtime_env)
    context = RuntimeEnvContext(env_vars={"MINE": "1", "PATH": "/user/bin:${PATH}"})
    size = asyncio.run(plugin.create(uris[0], runtime_env, context))
    plugin.modify_context(uris, runtime_env, context)
    return uris, size, context


def test_each_byte_is_booked_once_and_freed_once(store: Path, fake_pixi_env: Path) -> None:
    plugin = PixiPlugin()
    uri = plugin.get_uris(SPEC)[0]

    async def two_setups() -> list[float]:
        ctx = RuntimeEnvContext()
        return list(await asyncio.gather(plugin.create(uri, SPEC, ctx),
                                         plugin.create(uri, SPEC, ctx)))

    sizes = asyncio.run(two_setups())
    assert sorted(sizes)[0] == 0 and sorted(sizes)[1] > 10_000_000  # a venv with Ray in it
    assert install_count(fake_pixi_env) == 1
    assert plugin.delete_uri(uri) == max(sizes)
    assert not any(store.glob("envs/*.json"))
    assert plugin.delete_uri(uri) == 0  # already gone: no error, nothing booked


def test_an_env_another_agent_uses_is_kept_on_disk(store: Path) -> None:
    first, second = PixiPlugin(), PixiPlugin()  # two agents sharing one store
    uris, size, _ = setup(first, SPEC)
    assert setup(second, SPEC)[1] == size
    assert first.delete_uri(uris[0]) == size  # booked bytes leave first's cache...
    assert len(list(store.glob("envs/*.json"))) == 1  # ...but second still uses the env
    assert second.delete_uri(uris[0]) == size
    assert not any(store.glob("envs/*.json"))


def test_workers_get_the_quoted_env_python_under_the_users_env_vars(store: Path) -> None:
    _, _, context = setup(PixiPlugin(), SPEC)
    [python] = shlex.split(context.py_executable)
    assert python.startswith(str(store / "envs")) and python.endswith("/bin/python")
    assert context.env_vars["MINE"] == "1"
    assert context.env_vars["PATH"] == "/user/bin:${PATH}"  # the user's value wins
    assert context.env_vars["PIXI_ENVIRONMENT_NAME"] == "default"


def test_a_pinned_pixi_is_fetched_from_the_mirror_when_the_node_has_none(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror" / "v0.77.0"
    mirror.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(FAKE_PIXI, arcname="pixi")
    asset = mirror / "pixi-x86_64-unknown-linux-musl.tar.gz"
    asset.write_bytes(buffer.getvalue())
    (mirror / (asset.name + ".sha256")).write_text(hashlib.sha256(buffer.getvalue()).hexdigest())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, directory=str(tmp_path / "mirror"), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RAY_PIXI_DOWNLOAD_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("PATH", ":".join(p for p in __import__("os").environ["PATH"].split(":")
                                         if "fake_pixi" not in p))
    try:
        runtime_env = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"},
                                    pixi_version="0.77.0")}
        _, _, context = setup(PixiPlugin(), runtime_env)
    finally:
        server.shutdown()
    assert (store / "pixi" / "0.77.0" / "pixi").read_bytes() == FAKE_PIXI.read_bytes()
    assert context.env_vars["PIXI_EXE"] == str(store / "pixi" / "0.77.0" / "pixi")
