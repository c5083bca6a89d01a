"""Write one conda package (`.conda`, format v2) from a staged directory.

py-rattler 0.28 reads packages (`PathsJson`/`IndexJson.from_package_archive`, `extract`)
but has no API that writes `info/paths.json` or a `.conda` archive, so this module writes
both to the conda package spec (a stored zip of `metadata.json`, `info-*.tar.zst` and
`pkg-*.tar.zst`), then reads the result back with py-rattler: a package rattler cannot
parse fails here, not inside pixi.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PackageInfo", "write_conda"]

# The conda spec's default for .conda is level 19; 10 packs a CPython within a few percent
# of it in a fraction of the time.
_ZSTD_LEVEL = 10


@dataclass(frozen=True)
class PackageInfo:
    """One package of the channel, as its record in repodata.json names it."""

    name: str
    version: str
    build: str
    subdir: str
    filename: str


def _is_text(data: bytes) -> bool:
    return b"\0" not in data


def _paths_entries(root: Path, placeholder: str | None) -> list[dict[str, Any]]:
    """paths.json entries for every file and symlink under `root` (sorted).

    A text file that holds `placeholder` is declared with `prefix_placeholder` and
    `file_mode: text`, so the installer rewrites it to the environment's prefix. Binary
    files are never declared: a binary placeholder can only be replaced by a prefix no
    longer than itself, and the packages here are made relocatable by other means
    (`$ORIGIN` RUNPATHs).
    """
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_symlink() or p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entry: dict[str, Any] = {"_path": rel, "path_type": "softlink"}
            target = path.resolve()
            if target.is_file() and target.is_relative_to(root.resolve()):
                data = target.read_bytes()
                entry |= {"sha256": hashlib.sha256(data).hexdigest(),
                          "size_in_bytes": len(data)}
            entries.append(entry)
            continue
        data = path.read_bytes()
        entry = {"_path": rel, "path_type": "hardlink",
                 "sha256": hashlib.sha256(data).hexdigest(), "size_in_bytes": len(data)}
        if placeholder and placeholder.encode() in data and _is_text(data):
            entry |= {"prefix_placeholder": placeholder, "file_mode": "text"}
        entries.append(entry)
    return entries


def _tar_zst(root: Path, members: list[str], mtime: int) -> bytes:
    """A zstd-compressed tar of `members` (paths relative to `root`), owned by root:root
    with one mtime, so equal inputs give equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in members:
            info = tar.gettarinfo(root / rel, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            if info.isreg():
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    import zstandard  # imported late: the suite must collect without it (then it skips)

    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, threads=-1).compress(raw.getvalue())


def write_conda(
    stage: Path,
    index: dict[str, Any],
    out_dir: Path,
    *,
    placeholder: str | None = None,
    about: dict[str, Any] | None = None,
    link: dict[str, Any] | None = None,
) -> Path:
    """Pack the files under `stage` (laid out as they install into a prefix) as
    `<out_dir>/<name>-<version>-<build>.conda` and return its path.

    `index` is info/index.json; `placeholder` the build prefix text files may hold;
    `link` info/link.json (noarch: python packages need it).
    """
    entries = _paths_entries(stage, placeholder)
    if not entries:
        raise ValueError(f"{stage} holds no files: a conda package needs at least one")
    info = out_dir / ".info-stage"
    (info / "info").mkdir(parents=True, exist_ok=False)
    try:
        metadata = {
            "index.json": index,
            "paths.json": {"paths": entries, "paths_version": 1},
            "about.json": about or {},
        }
        if link is not None:
            metadata["link.json"] = link
        for name, content in metadata.items():
            (info / "info" / name).write_text(json.dumps(content, indent=2, sort_keys=True))
        (info / "info" / "files").write_text("".join(e["_path"] + "\n" for e in entries))
        if placeholder:
            (info / "info" / "has_prefix").write_text("".join(
                f'{placeholder} text {e["_path"]}\n' for e in entries
                if "prefix_placeholder" in e))
        stem = f'{index["name"]}-{index["version"]}-{index["build"]}'
        mtime = int(index["timestamp"] // 1000)
        info_members = sorted(p.relative_to(info).as_posix() for p in (info / "info").iterdir())
        target = out_dir / f"{stem}.conda"
        partial = out_dir / f".{stem}.conda.partial"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
            z.writestr(f"info-{stem}.tar.zst", _tar_zst(info, info_members, mtime))
            z.writestr(f"pkg-{stem}.tar.zst",
                       _tar_zst(stage, [e["_path"] for e in entries], mtime))
        os.replace(partial, target)
    finally:
        for path in sorted(info.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        info.rmdir()
    _check_readable(target, index, len(entries))
    return target


def _check_readable(archive: Path, index: dict[str, Any], n_paths: int) -> None:
    """Read the archive back with py-rattler, as pixi will."""
    from rattler.package import IndexJson, PathsJson

    read_index = IndexJson.from_package_archive(archive)
    read_paths = PathsJson.from_package_archive(archive)
    seen = (read_index.name.normalized, str(read_index.version), len(read_paths.paths))
    if seen != (index["name"], index["version"], n_paths):
        raise RuntimeError(f"{archive}: py-rattler reads {seen}, expected "
                           f"{(index['name'], index['version'], n_paths)}")
