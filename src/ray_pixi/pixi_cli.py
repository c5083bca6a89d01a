"""The one place that runs pixi: finding the binary, the environment it runs with, and
running a command with its output in a log file and its process group stopped on
cancellation."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray_pixi import settings
from ray_pixi.errors import PixiInstallError, PixiNotFoundError
from ray_pixi.process import run_logged, tail

__all__ = [
    "MIN_PIXI_VERSION",
    "PixiExe",
    "check_min_version",
    "find_pixi_on_node",
    "pixi_env",
    "read_pixi_version",
    "run_pixi",
]

#: `shell-hook --json --as-is`, `--locked` and the `[workspace]` table all work from here.
MIN_PIXI_VERSION = (0, 53, 0)
_VERSION_TIMEOUT_SECONDS = 30
PIXI_NO_WRAP = "PIXI_NO_WRAP"

# Inherited variables that would make pixi act on another workspace, environment, platform
# or lock mode than the one the plugin names on the command line (a driver or agent started
# under `pixi run`/`pixi shell` carries them), or that change what Python imports or slow
# an install down. pixi's configuration (PIXI_CONFIG_FILE, PIXI_HOME, PIXI_TLS_ROOT_CERTS,
# PIXI_OFFLINE, PIXI_CACHE_*, mirrors in config files, RATTLER_AUTH_FILE) is the node
# operator's and is kept.
_STRIPPED = frozenset({
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV", "SOURCE_DATE_EPOCH",
    "PIXI_IN_SHELL", "PIXI_FROZEN", "PIXI_LOCKED", "PIXI_NO_INSTALL", "PIXI_PROMPT",
    "PIXI_OVERRIDE_PLATFORM", "PIXI_SHELL_ACTIVATION_DONE", "PIXI_EXE",
})
_STRIPPED_PREFIXES = ("PIXI_PROJECT_", "PIXI_ENVIRONMENT_", "PIXI_WORKSPACE_")


def pixi_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment pixi runs with: the node's, minus what would steer it elsewhere."""
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if name not in _STRIPPED and not name.startswith(_STRIPPED_PREFIXES)
    }
    env["PIXI_NO_PATH_UPDATE"] = "1"
    # pixi wraps its error reports at 80 columns without a terminal (0.77), which splits a
    # long package name across lines; the user reads them in the job's setup log whole.
    env[PIXI_NO_WRAP] = "1"
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
    """`pixi --version`, cached by the binary's path, mtime and size. Blocking: callers on
    an event loop run it in a thread."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise PixiNotFoundError(f"{path} cannot be read ({e.strerror}). Point "
                                f"{settings.PIXI_EXE} at a pixi binary.") from None
    cache_key = (path, st.st_mtime, st.st_size)
    if cache_key not in _version_cache:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True,
                timeout=_VERSION_TIMEOUT_SECONDS, env=pixi_env(), check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise PixiNotFoundError(f"Running `{path} --version` failed: {e}. Check that "
                                    f"{path} is a pixi binary for this platform.") from e
        version = _parse_version(out)
        if version is None or not out.strip().startswith("pixi "):
            raise PixiNotFoundError(f"`{path} --version` printed {out.strip()!r}, which is not "
                                    "pixi's `pixi X.Y.Z`. Check that it is a pixi binary.")
        _version_cache[cache_key] = version
    return _version_cache[cache_key]


def check_min_version(exe: PixiExe) -> PixiExe:
    if exe.version < MIN_PIXI_VERSION:
        raise PixiNotFoundError(
            f"pixi at {exe.path} is version {exe.version_str}; ray-pixi needs "
            f"{_format(MIN_PIXI_VERSION)} or newer. Upgrade it (`pixi self-update`), or set "
            f"pixi_version in the spec (or {settings.PIXI_VERSION} on the node) to have each "
            "node fetch a pinned release."
        )
    return exe


def find_pixi_on_node() -> PixiExe | None:
    """The node's explicit pixi (settings.PIXI_EXE), then `pixi` on PATH; None if neither
    exists. Blocking."""
    try:
        explicit = settings.pixi_exe(os.environ)
    except settings.InvalidSetting as e:
        raise PixiNotFoundError(str(e)) from None
    if explicit:
        path = explicit
    else:
        found = shutil.which("pixi")
        if found is None:
            return None
        path = found
    return check_min_version(PixiExe(path, read_pixi_version(path)))


async def run_pixi(
    exe: PixiExe,
    args: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    capture_stdout: bool = False,
    hold_fds: Sequence[int] = (),
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run `pixi <args>`, appending its output to `log_path`; on failure raise
    PixiInstallError with the command, exit code, the log's tail and the log's path."""
    done = await run_logged([exe.path, *args], log_path=log_path, cwd=cwd, env=pixi_env(),
                            capture_stdout=capture_stdout, hold_fds=hold_fds, on_line=on_line)
    if done.returncode != 0:
        message = (
            f"`{shlex.join(done.command)}` exited with code {done.returncode}.\n"
            f"Last lines of pixi's output:\n{await asyncio.to_thread(tail, log_path)}\n"
            f"Full log: {log_path}"
        )
        raise PixiInstallError(message, log_path=str(log_path))
    return done.stdout
