"""Finding pixi, a clean environment for it, and what a user reads when it fails (with the
session's real pixi)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import tomli_w

from ray_pixi.errors import PixiInstallError, PixiNotFoundError
from ray_pixi.pixi_cli import PixiExe, find_pixi_on_node, pixi_env, run_pixi
from ray_pixi.process import run_logged
from support import session_pixi


def test_only_what_selects_another_workspace_or_environment_is_stripped() -> None:
    kept = {"PATH": "/bin", "PIXI_CACHE_DIR": "/cache", "PIXI_CACHE_PYPI_WHEELS_DIR": "/c2",
            "PIXI_CONFIG_FILE": "/etc/site/pixi.toml", "PIXI_TLS_ROOT_CERTS": "system",
            "PIXI_OFFLINE": "true", "PIXI_HOME": "/pixi-home", "RATTLER_AUTH_FILE": "/a.json",
            "HTTPS_PROXY": "http://proxy:3128"}
    steering = {"PIXI_PROJECT_MANIFEST": "/x/pixi.toml", "PIXI_PROJECT_ROOT": "/x",
                "PIXI_IN_SHELL": "1", "PIXI_ENVIRONMENT_NAME": "gpu", "PIXI_FROZEN": "1",
                "PIXI_LOCKED": "1", "PIXI_NO_INSTALL": "1", "PIXI_OVERRIDE_PLATFORM": "osx-64",
                "PYTHONPATH": "/p", "PYTHONHOME": "/h", "VIRTUAL_ENV": "/v",
                "CONDA_PREFIX": "/c", "SOURCE_DATE_EPOCH": "0"}
    assert pixi_env({**kept, **steering}) == {**kept, "PIXI_NO_PATH_UPDATE": "1",
                                              "PIXI_NO_WRAP": "1"}


def test_explicit_pixi_wins_over_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pixi = session_pixi()
    monkeypatch.setenv("RAY_PIXI_EXE", str(pixi))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python3, but no pixi
    found = find_pixi_on_node()
    assert found is not None and found.path == str(pixi) and found.version_str == "0.77.0"


def test_a_bad_explicit_path_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_PIXI_EXE", str(tmp_path / "nope"))
    with pytest.raises(PixiNotFoundError,
                       match="^Invalid RAY_PIXI_EXE=.*nope': is not an executable"):
        find_pixi_on_node()


def test_no_pixi_anywhere_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_PIXI_EXE", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_pixi_on_node() is None


def test_an_old_pixi_is_refused_naming_its_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A FAKE old pixi (a script printing `pixi 0.30.2`): no release older than the minimum
    can be had here, and only its `--version` line matters."""
    old = tmp_path / "pixi"
    old.write_text("#!/bin/sh\necho 'pixi 0.30.2'\n")
    old.chmod(0o755)
    monkeypatch.setenv("RAY_PIXI_EXE", str(old))
    with pytest.raises(PixiNotFoundError, match=r"version 0\.30\.2; ray-pixi needs 0\.53\.0"):
        find_pixi_on_node()


def test_a_failed_command_reports_command_exit_code_tail_and_log(tmp_path: Path) -> None:
    exe = PixiExe(str(session_pixi()), (0, 77, 0))
    (tmp_path / "pixi.toml").write_text(
        '[workspace]\nname = "x"\nchannels = []\nplatforms = ["linux-64"]\n')
    log = tmp_path / "logs" / "install.log"
    with pytest.MonkeyPatch.context() as mp:  # nothing of this machine's pixi config
        mp.setenv("PIXI_HOME", str(tmp_path / "home"))
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        with pytest.raises(PixiInstallError) as e:
            asyncio.run(run_pixi(exe, ["install", "--manifest-path",
                                       str(tmp_path / "pixi.toml"), "--locked"],
                                 log_path=log, cwd=tmp_path))
    message = str(e.value)
    assert f"`{exe.path} install --manifest-path" in message
    assert "exited with code 1" in message
    assert "Error:   × lock file not up-to-date with the workspace" in message
    assert f"Full log: {log}" in message
    assert "lock file not up-to-date" in log.read_text()


def test_a_missing_long_hyphenated_package_is_named_on_one_line(tmp_path: Path) -> None:
    """pixi wraps its reports at 80 columns without a terminal; the error a user reads
    names the package whole (real pixi, an empty local channel)."""
    exe = PixiExe(str(session_pixi()), (0, 77, 0))
    for subdir in ("linux-64", "noarch"):
        (tmp_path / "channel" / subdir).mkdir(parents=True)
        (tmp_path / "channel" / subdir / "repodata.json").write_text(
            json.dumps({"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}}))
    name = "my-very-long-hyphenated-package-name-that-does-not-exist-anywhere"
    (tmp_path / "pixi.toml").write_text(tomli_w.dumps({
        "workspace": {"name": "x", "channels": [(tmp_path / "channel").as_uri()],
                      "platforms": ["linux-64"]},
        "dependencies": {name: "*"},
    }))
    with pytest.MonkeyPatch.context() as mp:  # nothing of this machine's pixi config
        mp.setenv("PIXI_HOME", str(tmp_path / "home"))
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        mp.setenv("PIXI_CACHE_DIR", str(tmp_path / "cache"))
        with pytest.raises(PixiInstallError) as e:
            asyncio.run(run_pixi(exe, ["install", "--manifest-path",
                                       str(tmp_path / "pixi.toml")],
                                 log_path=tmp_path / "install.log", cwd=tmp_path))
    line = next(ln for ln in str(e.value).splitlines() if "No candidates" in ln)
    assert f"No candidates were found for {name} *." in line


def test_stderr_lines_are_seen_as_they_come_and_all_logged(tmp_path: Path) -> None:
    """The install's progress reads pixi's stderr while it runs; the log keeps it all."""
    script = "echo one >&2; sleep 0.3; printf 'two\\nthree' >&2; echo out"
    seen: list[tuple[str, float]] = []

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        done = await run_logged(["/bin/sh", "-c", script], log_path=tmp_path / "log",
                                cwd=tmp_path, env=dict(os.environ), capture_stdout=True,
                                on_line=lambda line: seen.append((line, loop.time())))
        return done.stdout

    assert asyncio.run(scenario()) == "out\n"
    assert [line for line, _ in seen] == ["one", "two", "three"]
    assert seen[1][1] - seen[0][1] > 0.2  # "one" arrived before the command went on
    log = (tmp_path / "log").read_text()
    assert "one\ntwo\nthree" in log and "out\n" in log


def test_cancelling_a_step_kills_its_whole_process_group(tmp_path: Path) -> None:
    """A step's children (pixi's build backends, uv) die with it when Ray cancels."""
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}.child; echo $$ > {pids}; wait"

    async def scenario() -> list[int]:
        task = asyncio.ensure_future(run_logged(["/bin/sh", "-c", script],
                                                log_path=tmp_path / "log", cwd=tmp_path,
                                                env=dict(os.environ)))
        while not (pids.exists() and Path(f"{pids}.child").exists()):
            await asyncio.sleep(0.05)  # poll for the pids the step writes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [int(pids.read_text()), int(Path(f"{pids}.child").read_text())]

    for pid in asyncio.run(scenario()):
        assert not running(pid)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_step_past_its_timeout_is_stopped_and_says_so(tmp_path: Path) -> None:
    from ray_pixi.process import StepTimeout

    with pytest.raises(StepTimeout, match="ran longer than 1 s"):
        asyncio.run(run_logged(["/bin/sleep", "60"], log_path=tmp_path / "log",
                               cwd=tmp_path, env=dict(os.environ), timeout=1))
    assert "[stopped after 1 s]" in (tmp_path / "log").read_text()
