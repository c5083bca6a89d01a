"""Real pixi 0.77.0 in the offline world, called directly (no Ray, no plugin): a manifest
that names conda-forge and PyPI installs with nothing leaving the machine but PyPI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from realpixi.channel import Channel
from realpixi.config import build_node_env, write_pixi_config
from realpixi.find import TestPixi
from realpixi.manifest import PYPI_PACKAGE, PYPI_VERSION, write_manifest
from realpixi.recipes import ACTIVATED_VAR, PATH_VAR, ActivationRecipe
from realpixi.run import clean_environ, run_pixi
from realpixi.servers import PYPI_HOSTS, ConnectRecorder, Mirror, Request

pytestmark = pytest.mark.integration

STALE_LOCK_LINE = "Error:   × lock file not up-to-date with the workspace"
MAPPING_ERROR = "failed to map conda packages to their PyPI equivalents"


@dataclass
class Installed:
    manifest: Path
    prefix: Path
    result: subprocess.CompletedProcess[str]
    mirror_requests: list[Request]
    proxy_targets: list[str]
    refused: list[str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, conda_channel: Channel,
              pixi_mirror: Mirror, pypi_proxy: ConnectRecorder,
              pixi_node_env: Mapping[str, str]) -> Installed:
    """One `pixi install` of the full manifest in a fresh workspace."""
    manifest = write_manifest(tmp_path_factory.mktemp("offline"), conda_channel)
    seen_mirror, seen_proxy = len(pixi_mirror.requests), len(pypi_proxy.attempts)
    result = run_pixi(["install", "--manifest-path", str(manifest)], pixi_node_env)
    attempts = pypi_proxy.attempts[seen_proxy:]
    return Installed(
        manifest, manifest.parent / ".pixi" / "envs" / "default", result,
        pixi_mirror.requests[seen_mirror:], [a.target for a in attempts],
        [a.target for a in attempts if not a.allowed])


def pixi_mirror_port(env: Mapping[str, str]) -> str:
    """The loopback mirror's address as the config file names it."""
    text = Path(env["PIXI_CONFIG_FILE"]).read_text()
    return text.split("http://127.0.0.1:", 1)[1].split("/", 1)[0]


def python(prefix: Path, code: str) -> str:
    out = subprocess.run([str(prefix / "bin" / "python"), "-c", textwrap.dedent(code)],
                         env=clean_environ({}), capture_output=True, text=True, check=True,
                         timeout=120)
    return out.stdout


def test_install_reaches_no_host_but_pypi(installed: Installed) -> None:
    """conda-forge and the conda->PyPI mapping come from the loopback mirror; the only
    hosts asked through the proxy are PyPI's."""
    assert installed.result.returncode == 0, installed.result.stderr
    assert installed.refused == []
    assert {t.rsplit(":", 1)[0] for t in installed.proxy_targets} <= set(PYPI_HOSTS)
    paths = [(r.path, r.status) for r in installed.mirror_requests]
    assert any(p.startswith("/conda-forge/") for p, _ in paths), paths
    assert all(s in (200, 304) for p, s in paths if p.startswith("/conda-forge/")), paths
    assert any(p.startswith("/conda-mapping/") for p, _ in paths), paths


def test_env_python_is_the_exact_version_with_conda_and_pypi_packages(
        installed: Installed, conda_channel: Channel) -> None:
    """The env's python reports exactly the channel's version and imports six (linked by
    pixi from the noarch package) and the PyPI package (installed by pixi's uv)."""
    out = json.loads(python(installed.prefix, f"""
        import json, platform, sys, importlib.metadata as md, six, {PYPI_PACKAGE}
        print(json.dumps({{
            "version": platform.python_version(), "prefix": sys.prefix,
            "six": six.__file__, "six_installer": md.distribution("six").read_text("INSTALLER"),
            "pypi": md.version("{PYPI_PACKAGE}"),
            "pypi_installer": md.distribution("{PYPI_PACKAGE}").read_text("INSTALLER"),
        }}))
    """))
    short = ".".join(out["version"].split(".")[:2])
    assert out["version"] == conda_channel.version("python")
    assert out["prefix"] == str(installed.prefix)
    assert out["six"] == str(installed.prefix / "lib" / f"python{short}" / "site-packages"
                             / "six.py")
    assert out["six_installer"].strip() == "conda"
    assert (out["pypi"], out["pypi_installer"].strip()) == (PYPI_VERSION, "uv-pixi")
    metas = {p.name.rsplit("-", 2)[0] for p in (installed.prefix / "conda-meta").glob("*.json")}
    assert {"python", "six", ActivationRecipe().name} <= metas
    assert PYPI_PACKAGE not in metas


def test_relocated_python_runs_its_stdlib_from_the_new_prefix(installed: Installed) -> None:
    """ssl, sqlite3, ctypes and venv work, and nothing is loaded from the installation the
    package was made from: RUNPATHs are $ORIGIN-relative and the prefix placeholders in
    text files were rewritten by the installer."""
    import sys

    source = Path(sys.base_prefix)
    out = json.loads(python(installed.prefix, """
        import ctypes, json, sqlite3, ssl, subprocess, sys, sysconfig, tempfile, venv
        ctypes.CDLL(None)
        sqlite3.connect(":memory:").execute("select 1")
        ssl.create_default_context()
        with tempfile.TemporaryDirectory() as d:
            venv.create(d, with_pip=False)
            made = subprocess.run([d + "/bin/python", "-c", "import sys; print(sys.prefix)"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        maps = sorted({line.split()[-1] for line in open("/proc/self/maps")
                       if line.split()[-1].startswith("/")})
        print(json.dumps({"maps": maps, "venv": made, "venv_dir": d,
                          "config_prefix": sysconfig.get_config_var("prefix"),
                          "openssl": ssl.OPENSSL_VERSION}))
    """))
    assert [m for m in out["maps"] if m.startswith(str(source))] == []
    assert str(installed.prefix / "lib" / "libpython3") in " ".join(out["maps"])
    assert out["config_prefix"] == str(installed.prefix)
    assert out["venv"] == out["venv_dir"]
    pydoc = next((installed.prefix / "bin").glob("pydoc3.*"))
    interpreter = installed.prefix / "bin" / pydoc.name.replace("pydoc", "python")
    assert pydoc.read_text().splitlines()[0] == f"#!{interpreter}"
    site = next((installed.prefix / "lib").glob("python3.*/site-packages"))
    assert not (site / "_pytest").exists()  # nothing of the source's site-packages


def test_shell_hook_replays_what_the_activate_script_sets(
        installed: Installed, pixi_node_env: Mapping[str, str]) -> None:
    """`pixi shell-hook --json` reports the activate.d export and the prepend to a
    path-like variable, keeping the node's own value after the package's entry."""
    result = run_pixi(["shell-hook", "--json", "--manifest-path", str(installed.manifest)],
                      {**pixi_node_env, PATH_VAR: "/opt/node/share"})
    assert result.returncode == 0, result.stderr
    variables = json.loads(result.stdout)["environment_variables"]
    assert variables[ACTIVATED_VAR] == ActivationRecipe().activated_value
    assert variables[PATH_VAR] == f"{installed.prefix}/share/ray-pixi-test:/opt/node/share"
    assert variables["CONDA_PREFIX"] == str(installed.prefix)


def test_lock_then_locked_install_and_the_stale_lock_error(
        tmp_path: Path, conda_channel: Channel, pixi_node_env: Mapping[str, str]) -> None:
    """`pixi lock` writes a pixi.lock that `install --locked` accepts; after a manifest
    edit the lock no longer satisfies, `--locked` fails with pixi's own error line. A
    missing lock fails the same way."""
    manifest = write_manifest(tmp_path / "ws", conda_channel, activation=False)
    locked = ["install", "--locked", "--manifest-path", str(manifest)]
    lock = run_pixi(["lock", "--manifest-path", str(manifest)], pixi_node_env)
    assert lock.returncode == 0, lock.stderr
    # The lock names conda-forge, not the mirror: it is valid on any site.
    lock_text = (manifest.parent / "pixi.lock").read_text()
    assert "https://conda.anaconda.org/conda-forge/" in lock_text
    assert pixi_mirror_port(pixi_node_env) not in lock_text
    first = run_pixi(locked, pixi_node_env)
    assert first.returncode == 0, first.stderr

    # A looser spec that the lock still satisfies is not stale to pixi.
    manifest.write_text(manifest.read_text().replace('six = "*"', 'six = ">=1"'))
    assert run_pixi(locked, pixi_node_env).returncode == 0

    write_manifest(tmp_path / "ws", conda_channel, activation=True)
    stale = run_pixi(locked, pixi_node_env)
    assert stale.returncode == 1
    assert STALE_LOCK_LINE in stale.stderr.splitlines(), stale.stderr

    (manifest.parent / "pixi.lock").unlink()
    missing = run_pixi(locked, pixi_node_env)
    assert missing.returncode == 1
    assert STALE_LOCK_LINE in missing.stderr.splitlines(), missing.stderr


def test_a_stalled_mirror_path_makes_real_pixi_hang(
        tmp_path: Path, conda_channel: Channel, pixi_mirror: Mirror,
        pixi_node_env: Mapping[str, str]) -> None:
    """Stalling the repodata path holds pixi on that request until it is killed (the way
    setup-timeout tests make real pixi hang). The session's warm pixi cache does not
    avoid the request: the mirror marks repodata `no-cache`, so every solve revalidates."""
    manifest = write_manifest(tmp_path / "ws", conda_channel, pypi=False)
    env = clean_environ(pixi_node_env)
    with pixi_mirror.stall("/conda-forge/*/repodata*") as stall:
        proc = subprocess.Popen([env["RAY_PIXI_EXE"], "install", "--manifest-path",
                                 str(manifest)], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert stall.wait_hit(timeout=120)
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=3)  # pixi is still waiting on the stalled request
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    pixi_mirror.unstall(stall)
    assert not (manifest.parent / ".pixi" / "envs" / "default" / "conda-meta" /
                "pixi").exists()


def test_without_the_mapping_mirror_a_pypi_install_fails(
        tmp_path: Path, conda_channel: Channel, pixi_mirror: Mirror, test_pixi: TestPixi) -> None:
    """What the mapping mirror is for: with conda-forge mirrored but the mapping service
    not (and no mapping in a cold pixi cache), pixi tries conda-mapping.prefix.dev and the
    install fails. A warm pixi cache hides this: pixi then falls back to the mapping
    answers it cached earlier."""
    with ConnectRecorder() as proxy:  # its own: these refusals are the point here
        config = write_pixi_config(tmp_path / "world", pixi_mirror.channel_url, None,
                                   tmp_path / "cold-cache")
        env = build_node_env(test_pixi.path, config, proxy.url)
        manifest = write_manifest(tmp_path / "ws", conda_channel)
        result = run_pixi(["install", "--manifest-path", str(manifest)], env)
        refused = {a.target for a in proxy.refused}
    assert result.returncode == 1
    assert MAPPING_ERROR in result.stderr, result.stderr
    assert refused == {"conda-mapping.prefix.dev:443"}


def test_connect_recorder_tunnels_pypi_and_refuses_other_hosts() -> None:
    """The proxy is a real tunnel to PyPI and a wall for anything else (what makes the
    session's no-other-host check meaningful)."""
    import urllib.error
    import urllib.request

    with ConnectRecorder() as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy.url}))
        with opener.open("https://pypi.org/simple/six/", timeout=60) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.URLError, match="403"):
            opener.open("https://conda.anaconda.org/conda-forge/noarch/repodata.json",
                        timeout=60)
        assert [(a.target, a.allowed) for a in proxy.attempts] == [
            ("pypi.org:443", True), ("conda.anaconda.org:443", False)]
