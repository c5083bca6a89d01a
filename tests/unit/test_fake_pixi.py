"""The FAKE pixi honours the parts of pixi's contract (shared/reference/pixi.md) that the
plugin relies on, failures included; if it drifted, the integration tests would prove
nothing about real pixi."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import FAKE_PIXI


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FAKE_PIXI), *args], capture_output=True, text=True, cwd=cwd)


def write(tmp_path: Path, deps: str = 'python = "*"') -> Path:
    manifest = tmp_path / "pixi.toml"
    manifest.write_text(f'[workspace]\nname = "t"\nchannels = ["conda-forge"]\n'
                        f'platforms = ["linux-64"]\n[dependencies]\n{deps}\n')
    return manifest


def test_version_line() -> None:
    assert run("--version", cwd=Path("/")).stdout.strip() == "pixi 0.77.0"


def test_locked_with_a_stale_lock_fails_with_pixis_text(tmp_path: Path) -> None:
    m = write(tmp_path)
    assert run("lock", "--manifest-path", str(m), cwd=tmp_path).returncode == 0
    assert run("lock", "--check", "--manifest-path", str(m), cwd=tmp_path).returncode == 0
    write(tmp_path, 'python = "3.11.*"')
    r = run("install", "--manifest-path", str(m), "--locked", cwd=tmp_path)
    assert r.returncode == 1
    assert "Error:   \u00d7 lock file not up-to-date with the workspace" in r.stderr
    assert run("lock", "--check", "--manifest-path", str(m), cwd=tmp_path).returncode == 1


def test_frozen_without_a_lock_fails_with_pixis_text(tmp_path: Path) -> None:
    m = write(tmp_path)
    r = run("install", "--manifest-path", str(m), "--frozen", cwd=tmp_path)
    assert r.returncode == 1
    assert "the lock file is not up-to-date with requested environment: 'default'" in r.stderr


def test_an_unsatisfiable_python_pin_fails_to_solve(tmp_path: Path) -> None:
    m = write(tmp_path, 'python = "==3.9.1"')
    r = run("install", "--manifest-path", str(m), cwd=tmp_path)
    assert r.returncode == 1
    assert "No candidates were found for python ==3.9.1" in r.stderr
    assert not (tmp_path / ".pixi" / "envs" / "default" / "conda-meta" / "pixi").exists()


def test_install_writes_conda_meta_and_shell_hook_reports_activation(tmp_path: Path) -> None:
    m = write(tmp_path, 'python = "3.11.*"\n[activation.env]\nMY_VAR = "1"')
    assert run("install", "--manifest-path", str(m), cwd=tmp_path).returncode == 0
    prefix = tmp_path / ".pixi" / "envs" / "default"
    meta = prefix / "conda-meta"
    assert (meta / "pixi_env_prefix").read_text() == str(prefix)
    assert json.loads((meta / "pixi").read_text())["environment_name"] == "default"
    assert list(meta.glob("python-3.11.*-*.json"))
    hook = json.loads(run("shell-hook", "--json", "--manifest-path", str(m), "--frozen",
                          cwd=tmp_path).stdout)
    variables = hook["environment_variables"]
    assert variables["PATH"].startswith(f"{prefix}/bin:")
    assert variables["CONDA_PREFIX"] == str(prefix) and variables["MY_VAR"] == "1"
    assert variables["PIXI_ENVIRONMENT_NAME"] == "default"


def test_removed_flags_are_errors(tmp_path: Path) -> None:
    m = write(tmp_path)
    r = run("install", "--manifest-path", str(m), "--no-lockfile-update", cwd=tmp_path)
    assert r.returncode == 2 and "unexpected argument '--no-lockfile-update'" in r.stderr
