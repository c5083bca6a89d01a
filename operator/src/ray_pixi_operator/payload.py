"""``ray-pixi-payload``: copy the payload from the image into a Ray pod's shared volume.

The webhook injects an init container that runs ``ray-pixi-payload add
/ray-pixi/payloads/<key>`` with the ``ray-pixi`` volume mounted at ``/ray-pixi`` (``<key>``
names the payload image: its tag and a digest of its reference). Afterwards the Ray container
finds::

    /ray-pixi/payloads/<key>/python/      ray_pixi (pure Python, what it vendors inside it)
    /ray-pixi/payloads/<key>/lib/python3.X/site-packages/ray-pixi.pth
                                          the user site of each Python minor: adds python/ to
                                          sys.path (PYTHONUSERBASE=/ray-pixi/payloads/<key>)
    /ray-pixi/payloads/<key>/bin/pixi     runs <arch>/pixi for the node's architecture
    /ray-pixi/payloads/<key>/x86_64/pixi  one pixi per architecture a pod of this volume ran on
    /ray-pixi/payloads/<key>/aarch64/pixi
    /ray-pixi/store/                      pixi environments, written by the Ray container's user
    /ray-pixi/pixi-cache/                 pixi's package cache, written by that user too

Pods of several payload versions and architectures share a hostPath or PVC: each payload image
has its own directory, each architecture its own pixi, and nothing is ever replaced. Every
part (``python``, ``lib``, ``bin``, ``<arch>``) is written into a temporary directory and
renamed into place once complete, under a lock file any uid can take, so a reader, a crash or
a concurrent installer never sees part of one; installing again changes nothing. A part that
is already there with other content (the image tag was reused for another build) is kept, with
a warning: pods sharing the volume keep running one payload.

Permissions. The init container runs as the Ray container's user when the pod names a
non-root one, else as the image's uid (65532); Ray images run as 1000. A non-root process
cannot chown, and kubelet applies ``fsGroup`` to emptyDir and PVC volumes but never to
hostPath. So the shared directories are as shared as the volume root: when it is
world-writable (emptyDir: 0777), ``store`` and ``pixi-cache`` are 1777 (like /tmp: any uid
creates entries, nobody removes another uid's) and so are ``payloads`` and ``payloads/<key>``
(installers of other uids add their architecture); when it is group-writable and not
world-writable (an fsGroup, or a directory prepared for a shared gid), they are group-writable
with the setgid bit, so what the group's uids create stays in the group. The payload's own
files are 0755/0644 and owned by their installer: Ray processes run and import them, never
change them. The volume root must be writable by the installer: emptyDir is; a hostPath
directory that kubelet creates is root-owned 0755, so create it ahead (mode 1777, or owned by
the installer's uid), or opt in to ``ray-pixi-payload prepare-volume`` (the error says so).

``ray-pixi-payload install``, the layout ray-pixi 0.1.0 and 0.2.0 injected, is
:mod:`.payload_legacy`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import os
import platform
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_SOURCE",
    "AddResult",
    "PayloadError",
    "add",
    "binary_arch",
    "main",
    "payload_id",
    "prepare_volume",
    "shared_modes",
]

# Where images/Dockerfile puts the payload.
DEFAULT_SOURCE = Path("/opt/ray-pixi/payload")
PIXI_RELPATH = Path("bin") / "pixi"
PYTHON_RELPATH = Path("python")
# Directories of the volume that the Ray container's user writes.
SHARED_DIRS = ("store", "pixi-cache")

# A temporary copy older than this is the leftover of a killed installer.
_STALE_TMP_SECONDS = 3600.0
_LOCK_TIMEOUT_SECONDS = 300.0


class PayloadError(RuntimeError):
    """The payload cannot be installed; the message says why and what to do."""



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
    """Copy with normalised modes (dirs 0755, files 0644 or 0755) and fsync everything;
    ``target`` may exist (empty)."""
    target.mkdir(mode=0o755, exist_ok=True)
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
            # The payload is read and run by another uid.
            _copy_file(src, dst, 0o755 if src.stat().st_mode & stat.S_IXUSR else 0o644)
    for dirpath, _, _ in os.walk(target, topdown=False):
        os.chmod(dirpath, 0o755)  # noqa: S103 -- read by the Ray container's uid
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def _locked(
    root: Path, name: str, timeout: float = _LOCK_TIMEOUT_SECONDS
) -> Iterator[None]:
    """An exclusive flock on ``root/name``; the file is opened read-only, so installers of
    any uid can take it (flock needs no write permission)."""
    lock_path = root / name
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:  # another uid created it, and this one may not create files here
        fd = os.open(lock_path, os.O_RDONLY)
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


# --- The layout by payload image and architecture (`ray-pixi-payload add`) ------------------

# Python minors whose user site gets the payload's .pth (free-threaded builds use "3.Xt").
PYTHON_MINORS = tuple(f"3.{minor}{abi}" for minor in range(10, 16) for abi in ("", "t"))
PTH_NAME = "ray-pixi.pth"
UNIT_MARKER = ".ray-pixi-part"
ADD_LOCK_NAME = ".lock"
# The conda/Kubernetes spellings of the architectures pixi ships Linux builds for.
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}
_ADD_TMP = ".tmp-"

LAUNCHER = """#!/bin/sh
# ray-pixi: run the pixi of this node's architecture. ray-pixi-payload (the pods' init
# container) puts one pixi per architecture beside this directory, so pods of several
# architectures can share one volume.
case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) arch=$(uname -m) ;;
esac
case "$0" in
  */*) here=${0%/*} ;;
  *) here=$(dirname "$(command -v "$0")") ;;
esac
pixi="$here/../$arch/pixi"
if [ ! -x "$pixi" ]; then
  echo "ray-pixi: no pixi for $arch in ${here%/bin}: the ray-pixi-payload init container of" \\
    "this pod installs the one of its image; check that it ran and that the image is built" \\
    "for $arch" >&2
  exit 127
fi
exec "$pixi" "$@"
"""


@dataclass(frozen=True)
class AddResult:
    dest: Path
    arch: str
    added: tuple[str, ...]  # parts written by this run
    present: tuple[str, ...]  # parts already there (the same, or kept with a warning)
    warnings: tuple[str, ...]


def binary_arch(path: Path) -> str | None:
    """The architecture an ELF executable is built for (None: not ELF, e.g. a script)."""
    with path.open("rb") as handle:
        head = handle.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def node_arch() -> str:
    machine = platform.machine()
    return ARCHES.get(machine, machine)


def shared_modes(volume_root: Path) -> tuple[int, int]:
    """(mode of payloads/ and payloads/<key>, mode of store/ and pixi-cache/): as shared as
    the volume root.

    World-writable root: 1777 for both, like /tmp. Group-writable only (an fsGroup, or a
    directory prepared for a shared gid): 3775 and 2775, so entries stay in the group (setgid)
    and, among the payloads, nobody replaces another uid's part (sticky). Otherwise the root is
    the installer's alone: payloads 0755, and store/pixi-cache 1777 since the Ray container may
    run as another uid than the installer.
    """
    mode = stat.S_IMODE(volume_root.stat().st_mode)
    if mode & stat.S_IWOTH:
        return 0o1777, 0o1777
    if mode & stat.S_IWGRP:
        return 0o3775, 0o2775
    return 0o755, 0o1777


def _ensure_dir(path: Path, mode: int) -> str | None:
    """A directory with at least ``mode``'s permission bits; a warning if it cannot get them."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.stat()
    current = stat.S_IMODE(st.st_mode)
    if current & mode == mode:
        return None
    try:
        os.chmod(path, current | mode)
    except PermissionError:
        writable = stat.S_IWOTH | stat.S_IWGRP
        if current & writable >= mode & writable:
            return None
        return (
            f"{path} exists, belongs to uid {st.st_uid} with mode {current:04o} and uid "
            f"{os.getuid()} cannot give it mode {mode:04o}: other uids may be unable to write it"
        )
    return None


def _part_id(path: Path) -> str | None:
    try:
        return (path / UNIT_MARKER).read_text().strip() or None
    except OSError:
        return None


def _user_sites(target: Path) -> None:
    """The ``lib`` part: python3.X/site-packages/ray-pixi.pth for each minor, which adds the
    payload's python/ and then the default user site (~/.local) that PYTHONUSERBASE would
    otherwise hide."""
    for minor in PYTHON_MINORS:
        site = target / f"python{minor}" / "site-packages"
        site.mkdir(parents=True)
        home_site = f".local/lib/python{minor}/site-packages"
        (site / PTH_NAME).write_text(
            "# ray-pixi: its payload for the runtime_env agent, then the user site that\n"
            "# PYTHONUSERBASE would otherwise hide.\n"
            "../../../python\n"
            f"import os, site; d = os.path.join(os.path.expanduser('~'), {home_site!r}); "
            "os.path.isdir(d) and site.addsitedir(d)\n"
        )


def _write_part(dest: Path, name: str, part_id: str, build: Callable[[Path], None],
                token: str) -> tuple[bool, str | None]:
    """Put one part of the payload at ``dest/name`` unless it is there; (added, warning)."""
    final = dest / name
    existing = _part_id(final)
    if existing is not None:
        if existing == part_id:
            return False, None
        return False, (
            f"{final} holds another build ({existing}) than this image's ({part_id}): kept, "
            "so every pod sharing this volume runs one payload. The image's tag was reused for "
            "new content: give each build its own tag (or pin a digest), or delete that "
            "directory to replace it"
        )
    tmp = dest / f"{_ADD_TMP}{name}-{token}"
    try:
        tmp.mkdir(mode=0o755)
        build(tmp)
        marker = tmp / UNIT_MARKER
        marker.write_text(part_id + "\n")
        os.chmod(marker, 0o644)
        for dirpath, _, _ in os.walk(tmp, topdown=False):
            os.chmod(dirpath, 0o755)  # noqa: S103 -- read and run by the Ray container's uid
            _fsync_dir(Path(dirpath))
        if final.exists():  # a part without its marker: never ours (ours are renamed in whole)
            aside = dest / f"{_ADD_TMP}{name}-replaced-{token}"
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another installer won a race the lock should have prevented (a filesystem
            # whose flock is not shared between nodes): its complete part stands.
            shutil.rmtree(tmp, ignore_errors=True)
            return False, None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(dest)
    return True, None


def _copy_file(source: Path, target: Path, mode: int) -> None:
    with (
        source.open("rb") as fin,
        open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fout,
    ):
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(target, mode)


def _prune_tmp(dest: Path, now: float) -> None:
    for entry in dest.iterdir():
        if not entry.name.startswith(_ADD_TMP):
            continue
        try:
            stale = now - entry.lstat().st_mtime > _STALE_TMP_SECONDS or "-replaced-" in entry.name
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def add(dest: Path, source: Path = DEFAULT_SOURCE) -> AddResult:
    """Add this image's payload (for the architecture of its pixi) to ``dest``, a directory
    ``<volume>/payloads/<key>``, and create ``store`` and ``pixi-cache`` in the volume."""
    source, dest = Path(source), Path(dest)
    if not dest.is_absolute():
        dest = Path.cwd() / dest
    volume = dest.parent.parent
    _check_source(source)
    if not volume.is_dir():
        raise PayloadError(f"{volume} does not exist: mount the ray-pixi volume there")
    _check_writable_root(volume)
    payloads_mode, shared_mode = shared_modes(volume)
    warnings = [w for w in (_ensure_dir(dest.parent, payloads_mode),) if w]
    warnings += [w for w in (_ensure_dir(dest, payloads_mode),) if w]

    pixi = source / PIXI_RELPATH
    built_for = binary_arch(pixi)
    here = node_arch()
    arch = built_for or here
    if built_for is not None and built_for != here:
        warnings.append(
            f"this image's pixi is built for {built_for} but this node is {here}: it goes to "
            f"{dest / built_for}, and pixi jobs on this node will fail until a payload image for "
            f"{here} runs here (build the image for each architecture of the cluster)"
        )
    python = source / PYTHON_RELPATH
    parts: list[tuple[str, str, Callable[[Path], None]]] = [
        ("python", payload_id(python), lambda tmp: _copy_tree(python, tmp)),
        ("lib", _digest_text(PTH_NAME, *PYTHON_MINORS, _user_sites_version()), _user_sites),
        ("bin", _digest_text(LAUNCHER), _write_launcher),
        (arch, _sha256(pixi), lambda tmp: _copy_file(pixi, tmp / "pixi", 0o755)),
    ]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    added: list[str] = []
    present: list[str] = []
    with _locked(dest, name=ADD_LOCK_NAME):
        _prune_tmp(dest, time.time())
        for name, part_id, build in parts:
            wrote, warning = _write_part(dest, name, part_id, build, token)
            (added if wrote else present).append(name)
            if warning:
                warnings.append(warning)
    for shared in SHARED_DIRS:
        warning = _ensure_dir(volume / shared, shared_mode)
        if warning:
            warnings.append(warning)
    return AddResult(dest, arch, tuple(added), tuple(present), tuple(warnings))


def _user_sites_version() -> str:
    return "pth-v1"


def _digest_text(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _write_launcher(tmp: Path) -> None:
    launcher = tmp / "pixi"
    launcher.write_text(LAUNCHER)
    os.chmod(launcher, 0o755)  # noqa: S103 -- run by the Ray container's uid


def prepare_volume(root: Path) -> str:
    """Make a directory kubelet created for a hostPath volume (root-owned 0755) writable by
    every uid, with the sticky bit (1777). Runs as root without any capability, so it can
    change only a directory root owns; one already writable for all is left alone."""
    root = Path(root)
    if not root.is_dir():
        raise PayloadError(f"{root} does not exist: mount the ray-pixi volume there")
    st = root.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o1777 == 0o1777:
        return f"{root} is already writable by every uid (mode {mode:04o})"
    if st.st_uid != os.geteuid():
        raise PayloadError(
            f"{root} belongs to uid {st.st_uid} (mode {mode:04o}), not to uid {os.geteuid()}, "
            "and this container has no capability to change it: give it mode 1777 on the node"
        )
    os.chmod(root, mode | 0o1777)  # noqa: S103 -- what this opt-in step is for
    return f"{root}: mode {mode:04o} -> {mode | 0o1777:04o}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ray-pixi-payload",
        description="Copy the ray-pixi payload (pixi + the plugin) into a Ray pod's volume.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    source_help = f"the payload to copy (default: {DEFAULT_SOURCE}, where the image has it)"
    cmd = commands.add_parser(
        "add",
        help="add this image's payload to DEST (e.g. /ray-pixi/payloads/<key>)",
        description=(
            "Add this image's payload (the plugin, and pixi for its architecture) to DEST, a "
            "directory <volume>/payloads/<key> that pods of other architectures and payload "
            "images may share, and create the shared store and pixi-cache directories in the "
            "volume. Nothing already there is replaced. Idempotent."
        ),
    )
    cmd.add_argument("dest", type=Path, help="e.g. /ray-pixi/payloads/0.2.0-3f2a9c1d4e5b")
    cmd.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=source_help)
    cmd = commands.add_parser(
        "prepare-volume",
        help="make a root-owned volume directory writable by every uid (mode 1777)",
        description=(
            "Give ROOT mode 1777 (every uid may create entries, none may remove another's), "
            "for a hostPath directory kubelet created root-owned. Run as root without "
            "capabilities: it can change only a directory root owns."
        ),
    )
    cmd.add_argument("root", type=Path, help="the volume's mount path, e.g. /ray-pixi")
    if __package__:  # the image's entry point (a lone copy of this file has add and
        # prepare-volume only): `install`, the 0.1.0/0.2.0 layout
        from .payload_legacy import add_install_command

        add_install_command(commands, source_help)
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            added = add(args.dest, args.source)
            for warning in added.warnings:
                print(f"ray-pixi-payload: warning: {warning}", file=sys.stderr)
            print(
                f"ray-pixi-payload: {added.dest} for {added.arch}: "
                f"added {', '.join(added.added) or 'nothing'}"
                + (f"; already present: {', '.join(added.present)}" if added.present else "")
            )
            return 0
        if args.command == "prepare-volume":
            print(f"ray-pixi-payload: {prepare_volume(args.root)}")
            return 0
        return int(args.run(args))
    except (PayloadError, OSError) as error:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            print(f"ray-pixi-payload: no space left on the volume: {error}", file=sys.stderr)
        else:
            print(f"ray-pixi-payload: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
