"""An install the user can watch: while it runs, one line in the job's setup log at each
phase and at least every few seconds between (node, environment, phase, time so far), and
the phase in a small file beside the workspace for `ray-pixi envs list` in another process.

Runs on the agent's event loop and must never stall it: the lines go to Ray's logger (as
Ray's own plugins write theirs), the file is written in a thread, one write at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ray_pixi import settings
from ray_pixi.progress import (
    STARTING,
    Progress,
    build_progress_line,
    dump_progress,
    phase_after_pixi_line,
)

__all__ = ["NODE_IP_FLAG", "TICK_SECONDS", "InstallWatch", "node_name"]

#: Between two lines of the setup log; under the 5 s the user is promised, with room for a
#: busy event loop.
TICK_SECONDS = 4.0
NODE_IP_FLAG = "node-ip-address"


def node_name() -> str:
    """This node as Ray names it (the agent's `--node-ip-address`), else its host name."""
    return settings.agent_flag(NODE_IP_FLAG) or socket.gethostname()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.write_text(text)
        os.replace(tmp, path)


class InstallWatch:
    """`async with InstallWatch(...) as watch:` around an install; `watch.phase = ...` as
    it moves on, `watch.on_pixi_line` for pixi's stderr."""

    def __init__(self, *, node: str, key: str, logger: logging.Logger, progress_path: Path,
                 tick: float = TICK_SECONDS) -> None:
        self._node, self._key, self._logger = node, key, logger
        self._path, self._tick = progress_path, tick
        self._phase = STARTING
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._changed = asyncio.Event()
        # Phases not yet told: pixi may print two steps in one burst, and each is shown.
        self._untold: list[str] = [STARTING]
        self._ticker: asyncio.Task[None] | None = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        if phase != self._phase:
            self._phase = phase
            self._untold.append(phase)
            self._changed.set()

    def on_pixi_line(self, line: str) -> None:
        self.phase = phase_after_pixi_line(self._phase, line)

    def line(self, phase: str | None = None) -> str:
        return build_progress_line(self._node, self._key, phase or self._phase,
                                   time.monotonic() - self._started)

    async def _record(self) -> None:
        record = Progress(self._node, self._key, self._phase, self._started_wall, os.getpid())
        await asyncio.to_thread(_write, self._path, dump_progress(record))

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            untold, self._untold = self._untold or [self._phase], []
            for phase in untold:
                self._logger.info("%s", self.line(phase))
            await self._record()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._tick)

    async def __aenter__(self) -> InstallWatch:
        self._ticker = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, t: type[BaseException] | None, v: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ticker
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._path.unlink, missing_ok=True)
