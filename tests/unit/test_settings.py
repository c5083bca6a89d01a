"""The node's settings: every variable valid, malformed (the exact message a user reads) and
unset; and that no other module of the plugin names them."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import ray_pixi
from ray_pixi import settings
from ray_pixi.settings import InvalidSetting, InvalidSettings

GIB = 2**30


def invalid(reader, env: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSetting) as caught:
        reader(env)
    return str(caught.value)


def test_the_store_dir_is_the_setting_else_the_users_cache(tmp_path: Path) -> None:
    assert settings.store_dir({"RAY_PIXI_STORE_DIR": "/data/store"}) == Path("/data/store")
    assert settings.store_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/ray-pixi/store")
    assert settings.store_dir({"HOME": "/home/u", "XDG_CACHE_HOME": "/x", "RAY_PIXI_STORE_DIR": ""}
                              ) == Path("/x/ray-pixi/store")
    assert invalid(settings.store_dir, {"RAY_PIXI_STORE_DIR": "store"}) == (
        "Invalid RAY_PIXI_STORE_DIR='store': must be an absolute path. Set it to the store's "
        "absolute directory (every Ray process and `ray-pixi envs` must name the same one), "
        "or unset it for ~/.cache/ray-pixi/store.")


def test_the_pinned_pixi_is_a_release_version() -> None:
    assert settings.pixi_version({"RAY_PIXI_PIXI_VERSION": " 0.77.0 "}) == "0.77.0"
    assert settings.pixi_version({}) is None
    assert invalid(settings.pixi_version, {"RAY_PIXI_PIXI_VERSION": "v0.77"}) == (
        "Invalid RAY_PIXI_PIXI_VERSION='v0.77': must be a pixi release version X.Y.Z. Write it "
        "like 0.77.0 (no leading 'v'), or unset it.")


def test_the_explicit_pixi_must_be_an_executable_file(tmp_path: Path) -> None:
    exe = tmp_path / "pixi"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert settings.pixi_exe({"RAY_PIXI_EXE": str(exe)}) == str(exe)
    assert settings.pixi_exe({}) is None
    assert invalid(settings.pixi_exe, {"RAY_PIXI_EXE": str(tmp_path)}) == (
        f"Invalid RAY_PIXI_EXE={str(tmp_path)!r}: is not an executable file. Point it at the "
        "pixi binary, or unset it to use pixi from PATH.")


def test_the_download_url_is_a_url() -> None:
    assert settings.download_url({"RAY_PIXI_DOWNLOAD_URL": "file:///mirror"}) == "file:///mirror"
    assert settings.download_url({}) == "https://github.com/prefix-dev/pixi/releases/download"
    assert invalid(settings.download_url, {"RAY_PIXI_DOWNLOAD_URL": "mirror.local/pixi"}) == (
        "Invalid RAY_PIXI_DOWNLOAD_URL='mirror.local/pixi': must be a URL starting with "
        "https://, http:// or file://. Set it to the base URL of a mirror of pixi's releases "
        "(holding v<version>/<asset>), or unset it for GitHub.")


@pytest.mark.parametrize("value", ["not-a-number", "0", "-1", "nan", "inf"])
def test_a_malformed_disk_budget_is_refused_not_turned_off(value: str) -> None:
    assert invalid(settings.disk_budget_bytes, {"RAY_PIXI_DISK_BUDGET_GB": value}) == (
        f"Invalid RAY_PIXI_DISK_BUDGET_GB={value!r}: must be a number of GiB greater than 0, "
        "such as 10 or 2.5. Set it to the GiB the store and pixi's cache may use together, or "
        "unset it for no budget.")


def test_the_disk_budget_is_gib_and_off_when_unset() -> None:
    assert settings.disk_budget_bytes({"RAY_PIXI_DISK_BUDGET_GB": "1.5"}) == int(1.5 * GIB)
    assert settings.disk_budget_bytes({}) is None
    assert settings.disk_budget_bytes({"RAY_PIXI_DISK_BUDGET_GB": ""}) is None


@pytest.mark.parametrize("value", ["ten", "", "0", "inf"])
def test_a_malformed_cache_size_is_refused_not_replaced_by_10_gib(value: str) -> None:
    """An empty value too: Ray's float() fails on it when its agent starts."""
    assert invalid(settings.cache_cap_bytes, {"RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB": value}) == (
        f"Invalid RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB={value!r}: must be a number of GiB "
        "greater than 0, such as 10 or 2.5. Ray parses it when its agent starts and fails the "
        "node on a malformed value: set it to a number, such as 10, or unset it for 10 GiB.")


def test_the_cache_size_is_gib_and_10_when_unset() -> None:
    assert settings.cache_cap_bytes({"RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB": "0.5"}) == GIB // 2
    assert settings.cache_cap_bytes({}) == 10 * GIB


def test_the_python_match_level_is_minor_or_patch() -> None:
    assert settings.python_match_level(
        {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor"}) == "minor"
    assert settings.python_match_level({}) == "patch"
    assert invalid(settings.python_match_level,
                   {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "major"}) == (
        "Invalid RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL='major': must be 'minor' or 'patch'. "
        "Ray refuses workers under any other value: set one, or unset it for 'patch'.")


def test_the_plugin_list_is_parsed_as_rays_agent_parses_it() -> None:
    registered = '[{"class": "ray_pixi.PixiPlugin", "priority": 5}]'
    assert settings.plugins({"RAY_RUNTIME_ENV_PLUGINS": registered}) == [
        {"class": "ray_pixi.PixiPlugin", "priority": 5}]
    assert settings.plugins({}) is None
    assert settings.plugins({"RAY_RUNTIME_ENV_PLUGINS": ""}) is None
    fix = ("Write it as a JSON list, e.g. export RAY_RUNTIME_ENV_PLUGINS="
           "'[{\"class\": \"ray_pixi.PixiPlugin\"}]'.")
    assert invalid(settings.plugins, {"RAY_RUNTIME_ENV_PLUGINS": "{bad"}).startswith(
        "Invalid RAY_RUNTIME_ENV_PLUGINS='{bad': is not JSON (")
    assert invalid(settings.plugins, {"RAY_RUNTIME_ENV_PLUGINS": '{"class": "x.Y"}'}) == (
        "Invalid RAY_RUNTIME_ENV_PLUGINS='{\"class\": \"x.Y\"}': must be a JSON list of objects "
        f"with a \"class\". {fix}")
    assert invalid(settings.plugins, {"RAY_RUNTIME_ENV_PLUGINS": '[{"class": "x.Y", '
                                      '"priority": 500}]'}).endswith(
        ": priority 500 of x.Y is not an integer from 0 to 100. Drop `priority` or give an "
        "integer from 0 to 100.")


def test_the_node_reads_every_setting_and_names_every_malformed_one() -> None:
    assert settings.read({"HOME": "/h"}) == settings.NodeSettings(
        store_dir=Path("/h/.cache/ray-pixi/store"), pixi_version=None,
        download_url=settings.DEFAULT_DOWNLOAD_URL, disk_budget_bytes=None,
        cache_cap_bytes=10 * GIB, python_match_level="patch")
    with pytest.raises(InvalidSettings) as caught:
        settings.read({"RAY_PIXI_DISK_BUDGET_GB": "lots", "RAY_PIXI_PIXI_VERSION": "latest"})
    assert [line.split(":")[0] for line in str(caught.value).splitlines()] == [
        "Invalid RAY_PIXI_PIXI_VERSION='latest'", "Invalid RAY_PIXI_DISK_BUDGET_GB='lots'"]


def test_agent_flags_are_read_in_both_forms() -> None:
    argv = ["main.py", "--log-dir=/tmp/s/logs", "--runtime-env-dir", "/tmp/s/re"]
    assert settings.agent_flag(settings.LOG_DIR_FLAG, argv) == "/tmp/s/logs"
    assert settings.agent_flag(settings.RUNTIME_ENV_DIR_FLAG, argv) == "/tmp/s/re"
    assert settings.agent_flag("session-dir", argv) is None


def _strings_outside_docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_other_module_names_a_node_setting() -> None:
    """One home: code elsewhere reads and mentions the variables through `settings`."""
    package = Path(os.path.dirname(ray_pixi.__file__))
    found = [f"{path.name}:{line}: {name}"
             for path in sorted(package.glob("*.py")) if path.name != "settings.py"
             for line, text in _strings_outside_docstrings(path)
             for name in settings.NAMES if name in text]
    assert found == []
