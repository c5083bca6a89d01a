"""pixi's behaviour that ray-pixi relies on, one test each, against the session's real pixi
(offline, tests/realpixi): a pixi upgrade that changes one of these fails a named test.

Each test also calls the plugin code that depends on the behaviour, so the contract and
its use cannot drift apart."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
import tomli_w

from ray_pixi.activation import build_activation
from ray_pixi.bytecode import UV_ARCHIVES
from ray_pixi.errors import PixiInstallError
from ray_pixi.install import WORKSPACE_CONFIG, env_prefix, is_stale_lock
from ray_pixi.pixi_cli import pixi_env, read_pixi_version
from realpixi.channel import Channel
from realpixi.manifest import build_manifest
from realpixi.recipes import ACTIVATED_VAR
from realpixi.run import run_pixi

pytestmark = pytest.mark.integration

STALE_LOCK_LINE = "Error:   × lock file not up-to-date with the workspace"


def workspace(root: Path, channel: Channel, sub: str = "", **options: bool) -> Path:
    manifest = root / sub / "pixi.toml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(build_manifest(channel, **options))
    return manifest


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def test_version_prints_pixi_and_a_release(pixi_node_env: Mapping[str, str]) -> None:
    out = ok(run_pixi(["--version"], pixi_node_env))
    assert re.fullmatch(r"pixi \d+\.\d+\.\d+\n", out)
    assert read_pixi_version(pixi_node_env["RAY_PIXI_EXE"]) == tuple(
        int(x) for x in out.split()[1].split("."))


def test_locked_install_names_a_stale_and_a_missing_lock_alike(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    manifest = workspace(tmp_path, conda_channel, pypi=False, activation=False)
    ok(run_pixi(["lock", "--manifest-path", str(manifest)], pixi_node_env))
    edited = tomllib.loads(manifest.read_text())
    edited["dependencies"]["ray-pixi-test-activation"] = "*"
    manifest.write_text(tomli_w.dumps(edited))
    stale = run_pixi(["install", "--locked", "--manifest-path", str(manifest)], pixi_node_env)
    assert stale.returncode == 1 and STALE_LOCK_LINE in stale.stderr.splitlines()
    (manifest.parent / "pixi.lock").unlink()
    missing = run_pixi(["install", "--locked", "--manifest-path", str(manifest)], pixi_node_env)
    assert missing.returncode == 1 and STALE_LOCK_LINE in missing.stderr.splitlines()
    assert is_stale_lock(stale.stderr) and is_stale_lock(missing.stderr)


def test_a_satisfied_lock_in_the_older_format_only_warns(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    """pixi 0.77 writes lock format v7 and reads v6 with a warning that says `run pixi
    lock`: an unrelated failure after that warning is not a stale lock."""
    manifest = workspace(tmp_path, conda_channel, pypi=False, activation=False)
    ok(run_pixi(["lock", "--manifest-path", str(manifest)], pixi_node_env))
    lock = manifest.parent / "pixi.lock"
    assert lock.read_text().startswith("version: 7\n")
    v6 = re.sub(r"^platforms:\n(?:[ -].*\n)+", "", lock.read_text().replace(
        "version: 7", "version: 6", 1), flags=re.M)  # v6 had no top-level platforms
    lock.write_text(v6)
    satisfied = run_pixi(["install", "--locked", "--manifest-path", str(manifest)],
                         pixi_node_env)
    assert satisfied.returncode == 0
    assert "the lock file is up-to-date but uses an older format (v6)" in satisfied.stderr
    # The same warning followed by a failure of another kind (no cache, offline).
    shutil.rmtree(manifest.parent / ".pixi")
    failed = run_pixi(["install", "--locked", "--offline", "--manifest-path", str(manifest)],
                      {**pixi_node_env, "PIXI_CACHE_DIR": str(tmp_path / "empty-cache")})
    assert failed.returncode != 0 and "older format" in failed.stderr
    assert not is_stale_lock(failed.stderr)


def test_shell_hook_json_reports_only_what_activation_changed(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    manifest = workspace(tmp_path, conda_channel, pypi=False)
    ok(run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env))
    out = ok(run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(manifest)],
                      pixi_node_env))
    data = json.loads(out)
    assert set(data) == {"environment_variables", "activation_scripts"}
    variables = data["environment_variables"]
    prefix = manifest.parent / ".pixi" / "envs" / "default"
    assert variables["CONDA_PREFIX"] == str(prefix)
    assert variables["PATH"].startswith(f"{prefix}/bin:")
    assert variables[ACTIVATED_VAR]  # the package's activate.d script ran
    assert variables["PIXI_ENVIRONMENT_NAME"] == "default"
    activation = build_activation(out, prefix, pixi_env())
    assert activation.env_vars["PATH"] == f"{prefix}/bin:${{PATH}}"


def test_shell_hook_as_is_neither_installs_nor_touches_the_lock(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    manifest = workspace(tmp_path, conda_channel, pypi=False, activation=False)
    ok(run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env))
    lock = (manifest.parent / "pixi.lock").read_text()
    manifest.write_text(manifest.read_text() + 'ray-pixi-test-activation = "*"\n')
    ok(run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(manifest)],
                pixi_node_env))
    assert (manifest.parent / "pixi.lock").read_text() == lock
    metas = {p.name for p in (manifest.parent / ".pixi/envs/default/conda-meta").glob("*")}
    assert not any(m.startswith("ray-pixi-test-activation") for m in metas)


def test_a_manifest_in_a_subdirectory_gets_its_own_environments_dir(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    manifest = workspace(tmp_path, conda_channel, sub="envs", pypi=False, activation=False)
    ok(run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env))
    out = ok(run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(manifest)],
                      pixi_node_env))
    assert (tmp_path / "envs" / ".pixi" / "envs" / "default" / "bin" / "python").exists()
    assert not (tmp_path / ".pixi").exists()
    assert env_prefix(out, tmp_path) == tmp_path / "envs" / ".pixi" / "envs" / "default"


def test_a_workspace_config_keeps_environments_in_place_whatever_the_node_config_says(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    detached = tmp_path / "detached"
    node_config = tmp_path / "node-config.toml"
    node_config.write_text(tomli_w.dumps({"detached-environments": str(detached)})
                           + Path(pixi_node_env["PIXI_CONFIG_FILE"]).read_text())
    env = {**pixi_node_env, "PIXI_CONFIG_FILE": str(node_config)}
    # Without the workspace's own config, the node's moves the environment away...
    moved = workspace(tmp_path / "a", conda_channel, pypi=False, activation=False)
    ok(run_pixi(["install", "--manifest-path", str(moved)], env))
    assert any(detached.iterdir())
    out = ok(run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(moved)], env))
    with pytest.raises(PixiInstallError, match="outside ray-pixi's store"):
        env_prefix(out, moved.parent)
    # ...with the one ray-pixi writes, it stays in the workspace.
    kept = workspace(tmp_path / "b", conda_channel, pypi=False, activation=False)
    (kept.parent / ".pixi").mkdir()
    (kept.parent / ".pixi" / "config.toml").write_text(WORKSPACE_CONFIG)
    ok(run_pixi(["install", "--manifest-path", str(kept)], env))
    out = ok(run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(kept)], env))
    assert env_prefix(out, kept.parent) == kept.parent / ".pixi" / "envs" / "default"
    assert (kept.parent / ".pixi" / "envs" / "default" / "bin" / "python").is_file()


def test_shell_hook_needs_bash(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    """No bash on PATH, no activation (pixi runs the activation scripts with bash)."""
    manifest = workspace(tmp_path, conda_channel, pypi=False, activation=False)
    ok(run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env))
    no_bash = run_pixi(["shell-hook", "--json", "--as-is", "--manifest-path", str(manifest)],
                       {**pixi_node_env, "PATH": str(tmp_path / "empty")})
    assert no_bash.returncode == 1
    assert "An activation error occurred" in no_bash.stderr


def test_packages_are_hard_linked_from_the_cache_and_uv_links_all_it_unpacked(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]
) -> None:
    """What the store's size accounting, the disk budget and shared bytecode rely on: files
    of an environment are hard links into pixi's cache (conda `pkgs/`, uv's
    `uv-cache/archive-v0/`), and uv links every file of an unpacked wheel, including
    bytecode added to it after unpacking."""
    cache = Path(pixi_node_env["PIXI_CACHE_DIR"])
    first = workspace(tmp_path / "one", conda_channel, activation=False)
    ok(run_pixi(["install", "--manifest-path", str(first)], pixi_node_env))
    site = next((first.parent / ".pixi/envs/default").glob("lib/python3*/site-packages"))
    assert (site / "six.py").stat().st_nlink > 1  # conda, from pkgs/
    jokes = next(p for p in site.glob("pyjokes/*.py"))
    assert jokes.stat().st_nlink > 1  # PyPI, from uv's cache
    twins = [p for p in (cache / UV_ARCHIVES).glob("*/pyjokes/" + jokes.name)
             if p.stat().st_ino == jokes.stat().st_ino]
    assert twins, "the PyPI file is not a link into uv-cache/archive-v0"
    marker = twins[0].parent / "__pycache__" / "ray-pixi-contract-marker.txt"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("linked by uv\n")
    try:
        second = workspace(tmp_path / "two", conda_channel, activation=False)
        ok(run_pixi(["install", "--manifest-path", str(second)], pixi_node_env))
        site2 = next((second.parent / ".pixi/envs/default").glob("lib/python3*/site-packages"))
        assert (site2 / "pyjokes" / "__pycache__" / marker.name).read_text() == "linked by uv\n"
    finally:
        marker.unlink()


def test_node_config_mirrors_redirect_channels_and_the_mapping(
    tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str], pixi_mirror
) -> None:
    """PIXI_CONFIG_FILE (the node setting ray-pixi documents for air-gapped clusters) is
    read by every pixi command the plugin runs, and an inline-style manifest naming
    conda-forge with a PyPI dependency resolves with the site's mirror alone."""
    seen = len(pixi_mirror.requests)
    manifest = workspace(tmp_path, conda_channel)
    ok(run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env))
    paths = [r.path for r in pixi_mirror.requests[seen:]]
    assert any(p.startswith("/conda-forge/") for p in paths)
    assert any(p.startswith("/conda-mapping/") for p in paths)
    # The lock names the upstream channel, so it stays valid at any site.
    assert "https://conda.anaconda.org/conda-forge/" in (manifest.parent / "pixi.lock").read_text()
