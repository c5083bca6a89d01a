"""``ray-pixi-payload install``: the payload layout ray-pixi 0.1.0 and 0.2.0 injected.

One directory per payload content (``.payload-<id>``) behind the symlink
``/ray-pixi/payload``, with ``store`` and ``pixi-cache`` beside it. New clusters get
``ray-pixi-payload add`` (:mod:`.payload`); this keeps working for the clusters whose records
still name ``install``. Dropping that support is deleting this module and its hook in
:func:`.payload.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .payload import (
    _STALE_TMP_SECONDS,
    DEFAULT_SOURCE,
    SHARED_DIRS,
    PayloadError,
    _check_source,
    _check_writable_root,
    _copy_tree,
    _fsync_dir,
    _locked,
    payload_id,
)

__all__ = ["InstallResult", "add_install_command", "install"]

SHARED_DIR_MODE = 0o1777
_VERSION_PREFIX = ".payload-"
_TMP_MARK = ".tmp-"
_COMPLETE_MARKER = ".complete"
_LOCK_NAME = ".payload.lock"


@dataclass(frozen=True)
class InstallResult:
    dest: Path
    version_dir: Path
    payload_id: str
    copied: bool  # False: that version was already there
    switched: bool  # False: dest already pointed at it
    pruned: tuple[Path, ...]


def _ensure_shared_dir(path: Path) -> str | None:
    """Create a directory every uid can write (1777); return a warning if it cannot be made so."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) == SHARED_DIR_MODE:
        return None
    try:
        os.chmod(path, SHARED_DIR_MODE)
    except PermissionError:
        if st.st_mode & stat.S_IWOTH:
            return None
        return (
            f"{path} exists, belongs to uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o} "
            f"and uid {os.getuid()} cannot make it writable for the Ray container's user"
        )
    return None


def _point_link(dest: Path, version_dir: Path, token: str) -> bool:
    """Make ``dest`` a relative symlink to ``version_dir`` with one rename; False if it was."""
    target = version_dir.name
    if dest.is_symlink() and os.readlink(dest) == target:
        return False
    tmp_link = dest.parent / f"{_VERSION_PREFIX}link{_TMP_MARK}{token}"
    os.symlink(target, tmp_link)
    try:
        if dest.is_dir() and not dest.is_symlink():
            # Only a payload laid out by hand or by something else: move it aside first.
            aside = dest.parent / f"{_VERSION_PREFIX}replaced{_TMP_MARK}{token}"
            os.rename(dest, aside)
        os.replace(tmp_link, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_link)
        raise
    _fsync_dir(dest.parent)
    return True


def _prune(root: Path, keep: set[str], now: float) -> tuple[Path, ...]:
    pruned = []
    for entry in root.iterdir():
        name = entry.name
        if not name.startswith(_VERSION_PREFIX) or name in keep or entry.is_symlink():
            continue
        if _TMP_MARK in name:
            # Another installer's copy in progress, unless it is old.
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age < _STALE_TMP_SECONDS and "replaced" not in name:
                continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        pruned.append(entry)
    return tuple(sorted(pruned))


def install(dest: Path, source: Path = DEFAULT_SOURCE) -> InstallResult:
    """Install the payload as ``dest`` (a symlink), with ``store`` and ``pixi-cache`` beside it."""
    source = Path(source)
    dest = Path(dest)
    if not dest.is_absolute():
        dest = Path.cwd() / dest
    root = dest.parent
    _check_source(source)
    if not root.is_dir():
        raise PayloadError(f"{root} does not exist: mount the ray-pixi volume there")
    _check_writable_root(root)

    pid = payload_id(source)
    version_dir = root / f"{_VERSION_PREFIX}{pid}"
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    with _locked(root, name=_LOCK_NAME):
        previous = os.readlink(dest) if dest.is_symlink() else None
        copied = False
        if not (version_dir / _COMPLETE_MARKER).is_file():
            if version_dir.exists():  # not ours: never renamed in without its marker
                shutil.rmtree(version_dir)
            tmp = root / f"{version_dir.name}{_TMP_MARK}{token}"
            try:
                _copy_tree(source, tmp)
                marker = tmp / _COMPLETE_MARKER
                marker.write_text(pid + "\n")
                os.chmod(marker, 0o644)
                os.rename(tmp, version_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(root)
            copied = True
        switched = _point_link(dest, version_dir, token)
        keep = {version_dir.name, dest.name}
        if previous:
            keep.add(previous)
        pruned = _prune(root, keep, time.time())
    warnings = [w for w in (_ensure_shared_dir(root / d) for d in SHARED_DIRS) if w]
    for warning in warnings:
        print(f"ray-pixi-payload: warning: {warning}", file=sys.stderr)
    return InstallResult(dest, version_dir, pid, copied, switched, pruned)


def add_install_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], source_help: str
) -> None:
    """Add ``install`` to ``ray-pixi-payload``'s commands."""
    cmd = commands.add_parser(
        "install",
        help="install the payload at DEST atomically (ray-pixi 0.1/0.2 layout)",
        description=(
            "Install the payload as DEST (a symlink to a versioned copy beside it) and create "
            "the shared store and pixi-cache directories next to it. Idempotent. What clusters "
            "prepared by ray-pixi 0.1.0 and 0.2.0 run; new clusters get `add`."
        ),
    )
    cmd.add_argument("dest", type=Path, help="where the payload appears, e.g. /ray-pixi/payload")
    cmd.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=source_help)
    cmd.set_defaults(run=_run_install)


def _run_install(args: argparse.Namespace) -> int:
    result = install(args.dest, args.source)
    state = "copied" if result.copied else "already present"
    print(
        f"ray-pixi-payload: payload {result.payload_id} {state}; {result.dest} -> "
        f"{result.version_dir.name}"
        + (f"; pruned {len(result.pruned)} old" if result.pruned else "")
    )
    return 0
