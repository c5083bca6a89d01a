"""The env-defining files of a project-mode spec: the manifest, its pixi.lock and the
files its include/exclude globs select inside the working_dir.

The node collects and hashes them in the working_dir exactly as Ray uploaded and
downloaded it (Ray's excludes and .gitignore/.rayignore already applied, symlinks already
followed), keys the environment by that digest, and copies exactly these files into the
store. Editing any other file (the driver script) changes the working_dir but not the key.
On the driver, `pixi()` only checks that the manifest and its lock are there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ray_pixi.errors import PixiSpecError
from ray_pixi.spec import PixiSpec

__all__ = ["LOCK_NAME", "collect_project_files", "copy_project_files", "digest_project_files"]

LOCK_NAME = "pixi.lock"
# Never env-defining: pixi's own install dir, VCS data, bytecode.
_ALWAYS_EXCLUDED = {".pixi", ".git", "__pycache__", ".ray-pixi"}
_UPLOAD_RULES = ".gitignore, .rayignore and runtime_env['excludes'] (Ray does not upload " \
    "what they match)"


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _expand(root: Path, patterns: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for pattern in patterns:
        for match in root.glob(pattern):
            candidates = [match] if not match.is_dir() else [p for p in match.rglob("*")]
            for path in candidates:
                rel = path.relative_to(root)
                if _ALWAYS_EXCLUDED.intersection(rel.parts) or path.is_dir():
                    continue
                found.add(rel.as_posix())
    return found


def check_manifest_and_lock(root: Path, spec: PixiSpec) -> list[str]:
    """The manifest and (when installing locked) its pixi.lock, as paths relative to
    `root`; raises PixiSpecError naming what is missing and how to fix it."""
    assert spec.manifest is not None
    manifest = PurePosixPath(spec.manifest)
    if not (root / manifest).is_file():
        raise PixiSpecError(
            f"runtime_env['pixi']['manifest'] names {spec.manifest!r}, but the working_dir "
            f"{str(root)!r} has no such file. Give the manifest's path relative to the "
            f"working_dir, and check that {_UPLOAD_RULES} do not skip it."
        )
    files = [manifest.as_posix()]
    lock = manifest.parent / LOCK_NAME
    if (root / lock).is_file():
        files.append(lock.as_posix())
    elif spec.install_locked:
        raise PixiSpecError(
            f"runtime_env['pixi'] installs {spec.manifest!r} locked, but {lock.as_posix()!r} "
            f"is missing from the working_dir {str(root)!r}. Run `pixi lock --manifest-path "
            f"{spec.manifest}` and resubmit (check that {_UPLOAD_RULES} do not skip it), or "
            "pass locked=False to let the cluster solve it once."
        )
    return files


def collect_project_files(root: Path, spec: PixiSpec) -> list[str]:
    """Sorted relative paths of the env-defining files in a downloaded working_dir; raises
    on a missing manifest or lock, or a file that resolves outside `root` (a symlink
    escaping the working_dir: Ray's upload holds none, so one is not to be trusted)."""
    files = set(check_manifest_and_lock(root, spec))
    files |= _expand(root, spec.include) - _expand(root, spec.exclude)
    for rel in files:
        if not _inside(root, root / rel):
            raise PixiSpecError(
                f"runtime_env['pixi']['include'] selects {rel!r}, which resolves outside the "
                f"working_dir ({(root / rel).resolve()}). Narrow the include globs or replace "
                "the symlink with the file."
            )
    return sorted(files)


def digest_project_files(root: Path, files: Iterable[str]) -> str:
    """sha256 over each file's relative path, mode bit for executables, and content."""
    h = hashlib.sha256()
    for rel in files:
        path = root / rel
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def copy_project_files(root: Path, files: Iterable[str], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
