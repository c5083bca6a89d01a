"""Each private Ray name the plugin uses is guarded: on a Ray release that lacks it, the pixi
request that needed it fails with this Ray's version, the name and what to do instead, never
an ImportError trace, and the entry point still loads. Ray 2.60 (the tests' Ray) has every
name, so a missing one is simulated by deleting it from Ray's module; the compat tier
(tests/compat) runs the plugin on real older releases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray._private.runtime_env import packaging

from ray_pixi import compat, rayapi
from ray_pixi.errors import PixiSpecError, PixiUnavailableError
from ray_pixi.plugin import PixiPlugin


@pytest.fixture
def ray_before_local_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Ray < 2.60, which has no local:// working_dir."""
    monkeypatch.delattr(packaging, "get_local_dir_uri_path")


def test_a_local_working_dir_is_read_where_ray_has_them() -> None:
    assert rayapi.local_working_dir("local:///data/proj") == Path("/data/proj")
    assert rayapi.local_working_dir("gcs://_ray_pkg_0123abcd.zip") is None


def test_without_local_dir_support_an_uploaded_working_dir_still_works(
    ray_before_local_dirs: None, tmp_path: Path,
) -> None:
    uri = "gcs://_ray_pkg_0123abcd.zip"
    assert rayapi.local_working_dir(uri) is None
    assert rayapi.uploaded_working_dir(uri, str(tmp_path)) == tmp_path / "_ray_pkg_0123abcd"


def test_a_local_working_dir_on_a_ray_without_them_says_what_to_use_instead(
    ray_before_local_dirs: None,
) -> None:
    with pytest.raises(PixiSpecError) as e:
        rayapi.local_working_dir("local:///data/proj")
    text = str(e.value)
    assert f"This Ray ({ray.__version__}) has no " in text
    assert "ray._private.runtime_env.packaging.get_local_dir_uri_path" in text
    assert "the project spec's working_dir 'local:///data/proj'" in text
    assert "no local:// working_dir support (Ray 2.60.0 added it)" in text
    assert "working_dir='/data/proj'" in text


def test_a_ray_without_the_unpacked_dir_lookup_names_the_inline_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(packaging, "get_local_dir_from_uri")
    with pytest.raises(PixiUnavailableError) as e:
        rayapi.uploaded_working_dir("gcs://_ray_pkg_0123abcd.zip", "/tmp/resources")
    assert f"This Ray ({ray.__version__}) has no " in str(e.value)
    assert "packaging.get_local_dir_from_uri, which ray-pixi needs for a project spec" in str(
        e.value)
    assert "Use an inline spec" in str(e.value)


def test_a_ray_without_the_plugin_base_fails_pixi_requests_with_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private.runtime_env import plugin as ray_plugin

    monkeypatch.delattr(ray_plugin, "RuntimeEnvPlugin")
    plugin = PixiPlugin()  # as Ray builds it: never raises
    assert plugin.get_uris({"pip": ["six"]}) == []
    with pytest.raises(PixiUnavailableError) as e:
        plugin.validate({"pixi": {"pypi_dependencies": {"six": "*"}}})
    text = str(e.value)
    assert f"Ray {ray.__version__}" in text
    assert "has no ray._private.runtime_env.plugin.RuntimeEnvPlugin" in text
    assert "every runtime_env['pixi'] request" in text
    assert compat.SUPPORTED in text
    assert "Jobs without runtime_env['pixi'] are not affected" in text


def test_the_entry_point_imports_on_a_ray_without_the_plugin_base() -> None:
    """Importing `ray_pixi.PixiPlugin` must not raise where the base class is missing: Ray
    imports it in the runtime_env agent, whose death takes the node down."""
    code = ("import ray._private.runtime_env.plugin as m; del m.RuntimeEnvPlugin\n"
            "from ray_pixi import PixiPlugin\n"
            "p = PixiPlugin()\n"
            "try:\n"
            "    p.validate({'pixi': 'pixi.toml'})\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PixiUnavailableError ray-pixi cannot run on this Ray node")
    assert "Traceback" not in out.stdout


def test_without_a_gcs_client_sharing_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray without `ray._raylet.GcsClient`: the node solves alone (ray_pixi.sharing)."""
    import ray._raylet

    monkeypatch.delattr(ray._raylet, "GcsClient")
    with pytest.raises(PixiUnavailableError, match="GcsClient.*This node solves the "
                       "environment itself"):
        rayapi.gcs_kv("127.0.0.1:1")


def test_a_gcs_client_without_the_kv_calls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray._raylet

    class Bare:
        def __init__(self, address: str) -> None:
            self.address = address

    monkeypatch.setattr(ray._raylet, "GcsClient", Bare)
    with pytest.raises(PixiUnavailableError, match="GcsClient.internal_kv_get"):
        rayapi.gcs_kv("127.0.0.1:1")
