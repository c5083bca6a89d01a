"""Byte-compile an environment at install, once per machine for each package.

PyPI wheels carry no .pyc files, and a worker that may not write them
(PYTHONDONTWRITEBYTECODE, a read-only store) would compile Ray on every start. So every
environment is compiled once at install, in parallel. pixi's uv installs a wheel by
hard-linking its unpacked files from pixi's package cache (`uv-cache/archive-v0/<id>/`), so
the compiled files are linked back there beside their sources: the next environment that
installs the same wheel links the bytecode with it, and its own compile finds nothing to do.
A .pyc records its source's mtime and size, which hard links share, and Python rewrites the
recorded file name on load, so a shared .pyc is as valid as one compiled in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ray_pixi.pixi_cli import pixi_env
from ray_pixi.process import run_logged

__all__ = ["compile_environment", "share_bytecode"]

_COMPILE_TIMEOUT_SECONDS = 900.0
UV_ARCHIVES = Path("uv-cache") / "archive-v0"


def _libs(prefix: Path) -> list[str]:
    return sorted(str(p) for p in prefix.glob("lib/python3*") if p.is_dir())


async def compile_environment(python: str, prefix: Path, log_path: Path, lock_fd: int) -> None:
    """`compileall` over everything the environment's Python imports; a file that does not
    compile (a test fixture in some package) is logged, not fatal."""
    libs = _libs(prefix)
    if libs:
        await run_logged(
            [python, "-I", "-m", "compileall", "-q", "-j", "0", *libs],
            log_path=log_path, cwd=prefix, env=pixi_env(), timeout=_COMPILE_TIMEOUT_SECONDS,
            shown="<env python> -m compileall -q -j 0 <env>/lib/python3*", hold_fds=(lock_fd,),
        )


def _compiled(libs: Iterable[str]) -> Iterator[tuple[Path, Path]]:
    """(bytecode, its source) for every .pyc under `libs` whose source is a hard link."""
    for lib in libs:
        for dirpath, _, filenames in os.walk(lib):
            if os.path.basename(dirpath) != "__pycache__":
                continue
            for name in filenames:
                if not name.endswith(".pyc"):
                    continue
                source = Path(dirpath).parent / (name.split(".", 1)[0] + ".py")
                try:
                    if source.stat().st_nlink > 1:
                        yield Path(dirpath, name), source
                except OSError:
                    continue


def _cache_sources(cache: Path) -> dict[tuple[int, int], Path]:
    """The unpacked wheels' sources in pixi's cache, by inode."""
    found: dict[tuple[int, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(cache / UV_ARCHIVES):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                with contextlib.suppress(OSError):
                    st = path.stat()
                    found[(st.st_dev, st.st_ino)] = path
    return found


def share_bytecode(prefix: Path, cache: Path) -> int:
    """Link the environment's bytecode into pixi's cache beside the sources it was
    compiled from; returns how many files were linked. Blocking; never raises."""
    try:
        compiled = list(_compiled(_libs(prefix)))
        if not compiled or not (cache / UV_ARCHIVES).is_dir():
            return 0
        twins = _cache_sources(cache)
    except OSError:
        return 0
    linked = 0
    for pyc, source in compiled:
        try:
            st = source.stat()
            twin = twins.get((st.st_dev, st.st_ino))
            if twin is None:
                continue
            target = twin.parent / "__pycache__" / pyc.name
            if target.exists():
                continue
            target.parent.mkdir(exist_ok=True)
            os.link(pyc, target)
            linked += 1
        except OSError:
            continue
    return linked
