"""Run a child process for an install step: its output appended to the install log, its
whole process group stopped when the step is cancelled (Ray's setup timeout, a cancelled
job) or runs past its own timeout, so nothing it started outlives the step.

If the agent itself dies (SIGKILL, OOM), the kernel kills the child too (Linux's parent-death
signal, as Ray does for its own processes), and the child holds the environment's install
lock for as long as it lives (the lock's descriptor is inherited): an orphaned pixi can
never write into a workspace that a later install has swept and started again.

Only `pixi_cli` (pixi itself) and `install` (the environment's own python, for the version
probe and byte-compilation) start processes, both through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Completed", "StepTimeout", "run_logged", "tail"]

_KILL_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 25


class StepTimeout(Exception):
    """The step ran longer than its own timeout and was stopped."""


@dataclass(frozen=True)
class Completed:
    command: tuple[str, ...]
    returncode: int
    stdout: str
    seconds: float


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


_PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc, signal.SIGTERM)
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_GRACE_SECONDS)
    _kill_group(proc, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, log: BinaryIO,
                on_line: Callable[[str], None]) -> None:
    """Copy `stream` into the log as it arrives, handing each complete line to `on_line`
    (read in chunks: a line of any length is copied whole)."""
    pending = b""
    while chunk := await stream.read(64 * 1024):
        log.write(chunk)
        log.flush()
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace"))
    if pending:
        on_line(pending.decode(errors="replace"))


async def _finish(proc: asyncio.subprocess.Process, log: BinaryIO,
                  on_line: Callable[[str], None] | None) -> bytes | None:
    """Wait for `proc`, with its stderr streamed through `on_line` when one is given."""
    if on_line is None or proc.stderr is None:
        out, _ = await proc.communicate()
        return out
    stdout = proc.stdout
    reading = asyncio.ensure_future(stdout.read()) if stdout is not None else None
    try:
        await _pump(proc.stderr, log, on_line)
        got = await reading if reading is not None else None
    finally:
        if reading is not None:
            reading.cancel()
    await proc.wait()
    return got


async def run_logged(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str],
    capture_stdout: bool = False,
    timeout: float | None = None,
    shown: str | None = None,
    hold_fds: Sequence[int] = (),
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run `argv`, appending `$ <command>`, its output and its exit code to `log_path`.

    Raises StepTimeout after `timeout` seconds; re-raises cancellation. In both cases the
    process group is stopped first (SIGTERM, then SIGKILL after a grace period).
    `hold_fds` (lock descriptors) are inherited, so their locks live as long as the child.
    `on_line` sees each line of stderr as it arrives (for the install's progress); the log
    still gets every byte.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    command = tuple(argv)
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {shown or shlex.join(command)}\n".encode())
        log.flush()
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=subprocess.PIPE if on_line else log,
            start_new_session=sys.platform != "win32",
            pass_fds=tuple(hold_fds),
            preexec_fn=_PREEXEC,
        )
        try:
            stdout = await asyncio.wait_for(_finish(proc, log, on_line), timeout)
        except asyncio.TimeoutError:
            await _stop(proc)
            log.write(f"[stopped after {timeout:.0f} s]\n".encode())
            raise StepTimeout(f"`{shown or shlex.join(command)}` ran longer than "
                              f"{timeout:.0f} s and was stopped") from None
        except BaseException:
            await _stop(proc)
            raise
        if capture_stdout and stdout:
            log.write(stdout)
        seconds = loop.time() - started
        log.write(f"[exit code {proc.returncode} after {seconds:.1f} s]\n".encode())
    text = stdout.decode(errors="replace") if capture_stdout and stdout else ""
    code = proc.returncode if proc.returncode is not None else -1
    return Completed(command, code, text, seconds)
