"""``ray-pixi-payload``: copy the payload from the image into a Ray pod's shared volume.

The webhook injects an init container that runs ``ray-pixi-payload install /ray-pixi/payload``
with the ``ray-pixi`` volume mounted at ``/ray-pixi``. Afterwards the Ray container finds::

    /ray-pixi/payload/bin/pixi        the pixi binary (executable)
    /ray-pixi/payload/python/         ray_pixi + tomli_w, pure Python (PYTHONPATH entry)
    /ray-pixi/store/                  pixi environments, written by the Ray container's user
    /ray-pixi/pixi-cache/             pixi's package cache, written by that user too

Atomic and idempotent. The payload is copied into ``/ray-pixi/.payload-<id>`` (``<id>`` is a
digest of the payload's content) through a temporary directory renamed into place only when
complete, and ``/ray-pixi/payload`` is a relative symlink swapped with one ``rename``: a pod
restart, or another pod sharing a hostPath or PVC volume, sees the old or the new payload,
never part of one. Installing the same payload again changes nothing. An exclusive lock on
``/ray-pixi/.payload.lock`` serialises installers sharing one volume; versions other than the
current and the previous one are pruned.

Permissions. The init container runs as the image's user (uid 65532) unless the RayCluster
sets an explicit ``runAsUser`` on its Ray container, and Ray images run as another uid (1000).
A non-root process cannot chown, and kubelet applies ``fsGroup`` to emptyDir and PVC volumes
but never to hostPath. So ``store`` and ``pixi-cache`` are made mode 1777 (world-writable with
the sticky bit, like /tmp): any uid can create its entries there and nobody can remove another
uid's. The payload itself is 0755/0644 and owned by the installer: Ray processes can run and
import it but not change it. The volume root must be writable by the installer: emptyDir is
(mode 0777); a hostPath directory that kubelet creates is root-owned 0755, so create it ahead
with mode 1777 or owned by uid 65532 (the error message says so).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_SOURCE",
    "PayloadError",
    "InstallResult",
    "install",
    "main",
    "payload_id",
]

# Where images/Dockerfile puts the payload.
DEFAULT_SOURCE = Path("/opt/ray-pixi/payload")
PIXI_RELPATH = Path("bin") / "pixi"
PYTHON_RELPATH = Path("python")
# Directories next to the payload link that the Ray container's user writes.
SHARED_DIRS = ("store", "pixi-cache")
SHARED_DIR_MODE = 0o1777

_VERSION_PREFIX = ".payload-"
_TMP_MARK = ".tmp-"
_COMPLETE_MARKER = ".complete"
_LOCK_NAME = ".payload.lock"
# A temporary copy older than this is the leftover of a killed installer.
_STALE_TMP_SECONDS = 3600.0
_LOCK_TIMEOUT_SECONDS = 300.0


class PayloadError(RuntimeError):
    """The payload cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class InstallResult:
    dest: Path
    version_dir: Path
    payload_id: str
    copied: bool  # False: that version was already there
    switched: bool  # False: dest already pointed at it
    pruned: tuple[Path, ...]


def _walk_files(source: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath, name)


def payload_id(source: Path) -> str:
    """A digest of the payload's paths, executable bits and contents (16 hex digits)."""
    digest = hashlib.sha256()
    for path in _walk_files(source):
        rel = path.relative_to(source).as_posix()
        if path.is_symlink():
            kind, data = "l", os.readlink(path).encode()
            digest.update(f"{kind}\0{rel}\0{len(data)}\0".encode())
            digest.update(data)
            continue
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        digest.update(f"f\0{rel}\0{int(executable)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _check_source(source: Path) -> None:
    pixi = source / PIXI_RELPATH
    if not pixi.is_file() or not os.access(pixi, os.X_OK):
        raise PayloadError(
            f"payload source {source} has no executable {PIXI_RELPATH}; "
            "is this the ray-pixi image (images/Dockerfile)? Pass --source to point elsewhere."
        )
    if not (source / PYTHON_RELPATH / "ray_pixi").is_dir():
        raise PayloadError(
            f"payload source {source} has no {PYTHON_RELPATH}/ray_pixi package; "
            "rebuild the image from images/Dockerfile."
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy with normalised modes (dirs 0755, files 0644 or 0755) and fsync everything."""
    target.mkdir(mode=0o755)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        out_dir = target / rel
        for name in sorted(dirnames):
            (out_dir / name).mkdir(mode=0o755)
        for name in sorted(filenames):
            src, dst = Path(dirpath, name), out_dir / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                continue
            mode = 0o755 if src.stat().st_mode & stat.S_IXUSR else 0o644
            with (
                src.open("rb") as fin,
                open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fout,
            ):
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(dst, mode)  # noqa: S103 -- the payload is read and run by another uid
    for dirpath, _, _ in os.walk(target, topdown=False):
        os.chmod(dirpath, 0o755)  # noqa: S103 -- read by the Ray container's uid
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def _locked(root: Path, timeout: float = _LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    lock_path = root / _LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PayloadError(
                        f"another ray-pixi-payload held {lock_path} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_writable_root(root: Path) -> None:
    if os.access(root, os.W_OK | os.X_OK):
        return
    st = root.stat()
    raise PayloadError(
        f"cannot write to {root} (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}) as "
        f"uid {os.getuid()}. For a hostPath cache, create the node directory ahead with mode 1777 "
        f"(or owned by uid {os.getuid()}); for a PVC, set the RayCluster pod's fsGroup or make "
        "the volume root writable."
    )


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
    with _locked(root):
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ray-pixi-payload",
        description="Copy the ray-pixi payload (pixi + the plugin) into a Ray pod's volume.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser(
        "install",
        help="install the payload at DEST atomically (e.g. /ray-pixi/payload)",
        description=(
            "Install the payload as DEST (a symlink to a versioned copy beside it) and create "
            "the shared store and pixi-cache directories next to it. Idempotent."
        ),
    )
    cmd.add_argument("dest", type=Path, help="where the payload appears, e.g. /ray-pixi/payload")
    cmd.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"the payload to copy (default: {DEFAULT_SOURCE}, where the image has it)",
    )
    args = parser.parse_args(argv)
    try:
        result = install(args.dest, args.source)
    except (PayloadError, OSError) as error:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            print(f"ray-pixi-payload: no space left on the volume: {error}", file=sys.stderr)
        else:
            print(f"ray-pixi-payload: {error}", file=sys.stderr)
        return 1
    state = "copied" if result.copied else "already present"
    print(
        f"ray-pixi-payload: payload {result.payload_id} {state}; {result.dest} -> "
        f"{result.version_dir.name}"
        + (f"; pruned {len(result.pruned)} old" if result.pruned else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
