"""`pixi()`: build `runtime_env["pixi"]` on the driver, where files are at hand and a bad
spec can fail before the job is submitted."""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray_pixi import project
from ray_pixi.errors import PixiSpecError
from ray_pixi.spec import parse_spec
from ray_pixi.tomlread import tomllib

__all__ = ["MAX_INLINE_BYTES", "pixi"]

#: The most an inlined manifest and lock may weigh in the runtime_env, compressed. Ray's job
#: supervisor receives the whole runtime_env in one environment variable (Linux caps one at
#: 128 KiB) and every task spec carries it; bigger projects travel in the working_dir.
MAX_INLINE_BYTES = 32 * 1024


def pixi(
    manifest: str | os.PathLike[str] | None = None,
    *,
    environment: str = "default",
    locked: bool | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    working_dir: str | os.PathLike[str] | None = None,
    channels: Sequence[str] | None = None,
    dependencies: Mapping[str, Any] | None = None,
    pypi_dependencies: Mapping[str, Any] | None = None,
    platforms: Sequence[str] | None = None,
    pixi_version: str | None = None,
    pixi_install_options: Sequence[str] | None = None,
    solve_tag: str | None = None,
) -> dict[str, Any]:
    """The value for `runtime_env["pixi"]`.

    - `pixi("pixi.toml")`: reads the manifest (pixi.toml or pyproject.toml, relative to
      `working_dir`, default the current directory) and its sibling pixi.lock and inlines
      both (the lock compressed), so no working_dir is needed and every node installs from
      the same bytes. Up to MAX_INLINE_BYTES; a bigger lock, or a manifest with local path
      dependencies, needs project mode.
    - `pixi("pixi.toml", include=["src/**"])` (or `include=[]`): project mode. The manifest,
      its lock and the included files travel in `runtime_env["working_dir"]`, which Ray
      uploads; the node keys the environment by those files, so editing others (the driver
      script) never rebuilds it.
    - `pixi(dependencies=..., pypi_dependencies=...)`: inline; Python and Ray are pinned to
      the cluster's when omitted.
    - A spec without a lock (inline, or `locked=False`) is solved once per cluster;
      `solve_tag="..."`, a new label, asks for a fresh solve.

    Raises PixiSpecError with the field, the value seen and the fix.
    """
    common: dict[str, Any] = {"environment": environment}
    if pixi_version is not None:
        common["pixi_version"] = pixi_version
    if pixi_install_options is not None:
        common["pixi_install_options"] = list(pixi_install_options)
    if locked is not None:
        common["locked"] = locked
    if solve_tag is not None:
        common["solve_tag"] = solve_tag
    inline = {k: _plain(v) for k, v in {
        "channels": channels, "dependencies": dependencies,
        "pypi_dependencies": pypi_dependencies, "platforms": platforms}.items() if v is not None}
    globs = {k: list(v) for k, v in (("include", include), ("exclude", exclude)) if v is not None}
    root = Path(working_dir or os.getcwd())
    if manifest is None:
        # Passed through, so that parse_spec names what does not belong with inline keys.
        value = {**common, **inline, **globs}
    elif not globs:
        value = {**common, **_inline_manifest(root, Path(manifest), locked), **inline}
    else:
        value = {**common, **_project(root, Path(manifest), globs, locked), **inline}
    parse_spec(value)  # the agent's validate runs the same checks
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise PixiSpecError(f"pixi() could not find the {what} {str(path)!r} (resolved from "
                            f"{os.getcwd()!r}). Pass the path of an existing file.") from None
    except OSError as e:
        raise PixiSpecError(f"pixi() could not read the {what} {str(path)!r}: {e}.") from None


def _local_sources(document: Any, where: tuple[str, ...] = ()) -> Iterator[str]:
    """Dependencies that name a local path (`{ path = "..." }`), as `table.name` strings."""
    if not isinstance(document, Mapping):
        return
    for key, value in document.items():
        here = (*where, str(key))
        if str(key).endswith("dependencies") and isinstance(value, Mapping):
            for name, requirement in value.items():
                if isinstance(requirement, Mapping) and "path" in requirement:
                    yield ".".join((*here, str(name)))
        elif isinstance(value, Mapping):
            yield from _local_sources(value, here)


def _project_fix(manifest: Path, extra: str = "") -> str:
    include = f"include=[{extra!r}]" if extra else "include=[]"
    return (f"runtime_env={{'working_dir': '.', 'pixi': pixi({str(manifest)!r}, {include})}} "
            "(project mode: the manifest, its pixi.lock and the included files travel in "
            "the working_dir, which Ray uploads)")


def _inline_manifest(root: Path, manifest: Path, locked: bool | None) -> dict[str, Any]:
    path = manifest if manifest.is_absolute() else root / manifest
    text = _read(path, "manifest")
    try:
        local = list(_local_sources(tomllib.loads(text)))
    except tomllib.TOMLDecodeError as e:
        raise PixiSpecError(f"pixi() could not parse the manifest {str(path)!r}: {e}. Fix "
                            "the TOML (`pixi lock` shows the same error).") from None
    if local:
        raise PixiSpecError(
            f"pixi() would inline {str(path)!r}, but it installs local files ({', '.join(local)}"
            "), which an inlined manifest cannot carry to the nodes. Use "
            + _project_fix(manifest, "<those packages' directories>/**") + "."
        )
    value: dict[str, Any] = {"manifest": path.name, "manifest_content": text}
    lock = path.parent / project.LOCK_NAME
    if lock.is_file():
        lock_text = _read(lock, "lock file")
        value["lock_zlib"] = base64.b64encode(zlib.compress(lock_text.encode(), 9)).decode()
    elif locked is not False:
        raise PixiSpecError(
            f"pixi() installs {str(path)!r} locked, but {str(lock)!r} does not exist. Run "
            f"`pixi lock --manifest-path {path}` and resubmit, or pass locked=False to let "
            "the cluster solve it once."
        )
    size = len(json.dumps(value))
    if size > MAX_INLINE_BYTES:
        raise PixiSpecError(
            f"pixi() would inline {str(path)!r} and its pixi.lock as {size // 1024} KiB "
            f"(compressed), more than the {MAX_INLINE_BYTES // 1024} KiB a runtime_env can "
            "carry to every task and through `ray job submit`. Use " + _project_fix(manifest)
            + "."
        )
    return value


def _project(
    root: Path, manifest: Path, globs: dict[str, list[str]], locked: bool | None
) -> dict[str, Any]:
    root = root.resolve()
    path = manifest if manifest.is_absolute() else root / manifest
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise PixiSpecError(
            f"runtime_env['pixi']['manifest'] {str(manifest)!r} is outside the working_dir "
            f"{str(root)!r}. Put the project inside the working_dir, or pass working_dir=."
        ) from None
    value: dict[str, Any] = {"manifest": relative.as_posix(), **globs}
    if locked is not None:
        value["locked"] = locked
    # Only the manifest and its lock are checked here: which files the globs select is
    # decided on the node, over exactly what Ray uploaded.
    project.check_manifest_and_lock(root, parse_spec(value))
    return value
