"""Solve a spec without a lock on this node: `pixi lock` in a scratch workspace of the store,
and the pixi.lock it wrote. Only `ray_pixi.sharing` calls it, for the one node that solves
for the cluster (or a node that cannot share).

Runs on the agent's event loop: file work in threads, pixi through `run_pixi`. The solve
is watched like an install (node, solution key, phase, time so far in the setup log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from ray_pixi import progress, project
from ray_pixi.cluster import ClusterInfo
from ray_pixi.install import ProjectFiles, write_workspace
from ray_pixi.pixi_cli import PixiExe, run_pixi
from ray_pixi.spec import PixiSpec
from ray_pixi.store import Store
from ray_pixi.watch import InstallWatch, node_name

__all__ = ["solve_on_this_node"]


def _prepare(store: Store, solution: str, spec: PixiSpec, cluster: ClusterInfo,
             files: ProjectFiles | None) -> tuple[Path, Path]:
    """A fresh scratch workspace (what a killed solve left goes first) and its log."""
    workspace = store.solve_workspace(solution)
    shutil.rmtree(workspace, ignore_errors=True)
    manifest = write_workspace(spec, cluster, workspace, files)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    log_path = store.solve_log(solution, f"{stamp}-{os.getpid()}")
    log_path.touch()
    return manifest, log_path


async def solve_on_this_node(
    *, solution: str, spec: PixiSpec, cluster: ClusterInfo, store: Store, pixi: PixiExe,
    files: ProjectFiles | None, logger: logging.Logger,
) -> str:
    """Run `pixi lock` for `spec` and return the lock's text. Caller holds the store's
    solve lock for `solution`. Raises PixiInstallError with pixi's report."""
    manifest, log_path = await asyncio.to_thread(_prepare, store, solution, spec, cluster, files)
    workspace = store.solve_workspace(solution)
    logger.info("Solving pixi environment %s for the cluster on this node; pixi's output: %s",
                solution, log_path)
    watch = InstallWatch(node=node_name(), key=solution, logger=logger,
                         progress_path=store.solutions / f"{solution}.progress")
    try:
        async with watch:
            watch.phase = progress.SOLVING
            with await store.cache_lock().acquire_async(shared=True) as cache_lock:
                await run_pixi(
                    pixi, ["lock", "--manifest-path", str(manifest), "-v"],
                    log_path=log_path, cwd=workspace, hold_fds=(cache_lock.fd,),
                    on_line=watch.on_pixi_line,
                )
            return await asyncio.to_thread(
                (manifest.parent / project.LOCK_NAME).read_text)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(shutil.rmtree, workspace, True)
