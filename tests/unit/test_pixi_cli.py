"""Finding pixi, a clean environment for it, and what a user reads when it fails."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ray_pixi.errors import PixiInstallError, PixiNotFoundError
from ray_pixi.pixi_cli import PixiExe, find_pixi_on_node, pixi_env, run_pixi
from support import FAKE_PIXI


def test_inherited_variables_that_steer_pixi_are_stripped() -> None:
    env = pixi_env({"PATH": "/bin", "PIXI_PROJECT_MANIFEST": "/x/pixi.toml", "PIXI_IN_SHELL": "1",
                    "PIXI_ENVIRONMENT_NAME": "gpu", "PIXI_FROZEN": "1", "PYTHONPATH": "/p",
                    "PYTHONHOME": "/h", "VIRTUAL_ENV": "/v", "SOURCE_DATE_EPOCH": "0",
                    "PIXI_CACHE_DIR": "/cache", "PIXI_CACHE_PYPI_DIR": "/c2"})
    assert env == {"PATH": "/bin", "PIXI_CACHE_DIR": "/cache", "PIXI_CACHE_PYPI_DIR": "/c2",
                   "PIXI_NO_PATH_UPDATE": "1"}


def test_explicit_pixi_wins_over_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_PIXI_EXE", str(FAKE_PIXI))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python3, but no pixi
    found = find_pixi_on_node()
    assert found is not None and found.path == str(FAKE_PIXI) and found.version_str == "0.77.0"


def test_a_bad_explicit_path_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_PIXI_EXE", str(tmp_path / "nope"))
    with pytest.raises(PixiNotFoundError, match="RAY_PIXI_EXE=.*nope' is not an executable"):
        find_pixi_on_node()


def test_no_pixi_anywhere_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_PIXI_EXE", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_pixi_on_node() is None


def test_an_old_pixi_is_refused_naming_its_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = tmp_path / "pixi"
    old.write_text(f"#!/bin/sh\nFAKE_PIXI_VERSION=0.30.2 exec {FAKE_PIXI} \"$@\"\n")
    old.chmod(0o755)
    monkeypatch.setenv("RAY_PIXI_EXE", str(old))
    with pytest.raises(PixiNotFoundError, match=r"version 0\.30\.2; ray-pixi needs 0\.53\.0"):
        find_pixi_on_node()


def test_a_failed_command_reports_command_exit_code_tail_and_log(tmp_path: Path) -> None:
    exe = PixiExe(str(FAKE_PIXI), (0, 77, 0))
    (tmp_path / "pixi.toml").write_text('[workspace]\nname="x"\nplatforms=[]\n')
    log = tmp_path / "logs" / "pixi" / "install.log"
    with pytest.raises(PixiInstallError) as e:
        asyncio.run(run_pixi(exe, ["install", "--manifest-path", str(tmp_path / "pixi.toml"),
                                   "--locked"], log_path=log, cwd=tmp_path))
    message = str(e.value)
    assert f"`{FAKE_PIXI} install --manifest-path" in message
    assert "exited with code 1" in message
    assert "lock file not up-to-date with the workspace" in message
    assert f"Full log: {log}" in message
    assert "lock file not up-to-date" in log.read_text()


def test_cancelling_a_command_kills_its_process_group(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "hung.pid"
    monkeypatch.setenv("FAKE_PIXI_HANG_INSTALL", str(marker))
    (tmp_path / "pixi.toml").write_text('[workspace]\nname="x"\nplatforms=[]\n'
                                        '[dependencies]\npython="*"\n')
    exe = PixiExe(str(FAKE_PIXI), (0, 77, 0))

    async def scenario() -> int:
        task = asyncio.ensure_future(run_pixi(
            exe, ["install", "--manifest-path", str(tmp_path / "pixi.toml")],
            log_path=tmp_path / "log", cwd=tmp_path))
        while not marker.exists():  # the fake writes its pid once it hangs mid-install
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(marker.read_text())

    pid = asyncio.run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
