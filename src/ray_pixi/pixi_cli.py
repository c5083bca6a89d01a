"""The one place that runs pixi: finding the binary, a clean environment for it, and
running a command with its output in a log file and its process group killed on
cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray_pixi.errors import PixiInstallError, PixiNotFoundError

__all__ = [
    "MIN_PIXI_VERSION",
    "PIXI_EXE_VAR",
    "PixiExe",
    "find_pixi_on_node",
    "pixi_env",
    "read_pixi_version",
    "run_pixi",
]

#: Explicit path to the pixi binary; wins over PATH (the KubeRay add-on sets it).
PIXI_EXE_VAR = "RAY_PIXI_EXE"
#: `shell-hook --json`, `--frozen`/`--locked` and the `[workspace]` table all work from here.
MIN_PIXI_VERSION = (0, 40, 0)
LOG_TAIL_LINES = 25
_KILL_GRACE_SECONDS = 5.0

# Inherited variables that change what pixi does (a driver or agent started under
# `pixi run` carries them) or what Python imports. Package-cache and home settings are
# configuration the operator sets on purpose and are kept.
_STRIPPED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV",
             "SOURCE_DATE_EPOCH", "PYTHONSTARTUP")
_KEPT_PIXI_VARS = ("PIXI_CACHE_DIR", "PIXI_HOME", "PIXI_NO_PATH_UPDATE")


def pixi_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment pixi runs with: the node's, minus what would steer it elsewhere."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in _STRIPPED or (
            name.startswith("PIXI_")
            and name not in _KEPT_PIXI_VARS
            and not name.startswith("PIXI_CACHE_")
        ):
            del env[name]
    env["PIXI_NO_PATH_UPDATE"] = "1"
    return env


def _parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _format(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class PixiExe:
    path: str
    version: tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return _format(self.version)


_version_cache: dict[tuple[str, float, int], tuple[int, int, int]] = {}


def read_pixi_version(path: str) -> tuple[int, int, int]:
    """`pixi --version`, cached by the binary's path, mtime and size (it runs on every
    cache-hit setup, so it must not spawn a process each time)."""
    st = os.stat(path)
    cache_key = (path, st.st_mtime, st.st_size)
    if cache_key not in _version_cache:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30,
                env=pixi_env(), check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise PixiNotFoundError(f"Running `{path} --version` failed: {e}. Check that "
                                    f"{path} is a pixi binary for this platform.") from e
        version = _parse_version(out)
        if version is None:
            raise PixiNotFoundError(f"`{path} --version` printed {out.strip()!r}, which has no "
                                    "version. Check that it is a pixi binary.")
        _version_cache[cache_key] = version
    return _version_cache[cache_key]


def check_min_version(exe: PixiExe) -> PixiExe:
    if exe.version < MIN_PIXI_VERSION:
        raise PixiNotFoundError(
            f"pixi at {exe.path} is version {exe.version_str}; ray-pixi needs "
            f"{_format(MIN_PIXI_VERSION)} or newer. Upgrade it (`pixi self-update`), or set "
            f"pixi_version in the spec to have each node fetch a pinned release."
        )
    return exe


def find_pixi_on_node() -> PixiExe | None:
    """`$RAY_PIXI_EXE`, then `pixi` on PATH; None if neither exists."""
    explicit = os.environ.get(PIXI_EXE_VAR)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise PixiNotFoundError(
                f"{PIXI_EXE_VAR}={explicit!r} is not an executable file. Point it at the "
                "pixi binary, or unset it to use pixi from PATH."
            )
        path = explicit
    else:
        found = shutil.which("pixi")
        if found is None:
            return None
        path = found
    return check_min_version(PixiExe(path, read_pixi_version(path)))


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def run_pixi(
    exe: PixiExe,
    args: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    capture_stdout: bool = False,
) -> str:
    """Run `pixi <args>`, appending its output to `log_path`.

    pixi runs in its own process group so that cancellation (Ray's setup timeout, a job
    cancelled mid-install) stops pixi and every child it started. On failure raises
    PixiInstallError with the command, exit code, the log's tail and the log's path.
    """
    command = [exe.path, *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=pixi_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=log,
            start_new_session=sys.platform != "win32",
        )
        try:
            stdout, _ = await proc.communicate()
        except BaseException:
            _kill_group(proc, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_GRACE_SECONDS)
            _kill_group(proc, signal.SIGKILL)
            raise
        if capture_stdout and stdout:
            log.write(stdout)
        log.write(f"[exit code {proc.returncode}]\n".encode())
    if proc.returncode != 0:
        tail = _tail(log_path)
        message = (
            f"`{shlex.join(command)}` exited with code {proc.returncode}.\n"
            f"Last lines of pixi's output:\n{tail}\n"
            f"Full log: {log_path}"
        )
        raise PixiInstallError(message, log_path=str(log_path))
    return stdout.decode() if capture_stdout and stdout else ""
