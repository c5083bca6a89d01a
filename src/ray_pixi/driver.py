"""`pixi()`: build `runtime_env["pixi"]` on the driver, where files are at hand and a bad
spec can fail before the job is submitted."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray_pixi import project
from ray_pixi.errors import PixiSpecError
from ray_pixi.spec import Mode, parse_spec

__all__ = ["pixi"]


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
) -> dict[str, Any]:
    """The value for `runtime_env["pixi"]`.

    - `pixi("pixi.toml")`: reads the manifest (pixi.toml or pyproject.toml) and its sibling
      pixi.lock and inlines both, so no working_dir is needed and every node installs from
      the same bytes.
    - `pixi("pixi.toml", include=["src/**"])`: project mode. The manifest, its lock and the
      included files stay in `runtime_env["working_dir"]` (default: the current directory);
      their digest keys the environment, so editing other files never rebuilds it.
    - `pixi(dependencies=..., pypi_dependencies=...)`: inline; Python and Ray are pinned to
      the cluster's when omitted.

    Raises PixiSpecError with the field, the value seen and the fix.
    """
    common: dict[str, Any] = {"environment": environment}
    if pixi_version is not None:
        common["pixi_version"] = pixi_version
    if pixi_install_options is not None:
        common["pixi_install_options"] = list(pixi_install_options)
    if locked is not None:
        common["locked"] = locked
    inline = {"channels": channels, "dependencies": dependencies,
              "pypi_dependencies": pypi_dependencies, "platforms": platforms}
    if manifest is None:
        value = {**common, **{k: _plain(v) for k, v in inline.items() if v is not None}}
    elif include is None and exclude is None:
        value = {**common, **_inline_manifest(Path(manifest), locked), **_unused(inline)}
    else:
        value = {**common, **_project(Path(manifest), include or (), exclude or (),
                                      working_dir, locked), **_unused(inline)}
    parse_spec(value)  # the agent's validate runs the same checks
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unused(inline: dict[str, Any]) -> dict[str, Any]:
    # Passed through so parse_spec reports "mixes inline keys with manifest keys".
    return {k: _plain(v) for k, v in inline.items() if v is not None}


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise PixiSpecError(f"pixi() could not find the {what} {str(path)!r} (resolved from "
                            f"{os.getcwd()!r}). Pass the path of an existing file.") from None
    except OSError as e:
        raise PixiSpecError(f"pixi() could not read the {what} {str(path)!r}: {e}.") from None


def _inline_manifest(manifest: Path, locked: bool | None) -> dict[str, Any]:
    value: dict[str, Any] = {"manifest": manifest.name,
                             "manifest_content": _read(manifest, "manifest")}
    lock = manifest.parent / project.LOCK_NAME
    if lock.is_file():
        value["lock_content"] = _read(lock, "lock file")
    elif locked is not False:
        raise PixiSpecError(
            f"pixi() installs {str(manifest)!r} locked, but {str(lock)!r} does not exist. Run "
            f"`pixi lock --manifest-path {manifest}` and resubmit, or pass locked=False to let "
            "every node solve on its own."
        )
    return value


def _project(
    manifest: Path,
    include: Sequence[str],
    exclude: Sequence[str],
    working_dir: str | os.PathLike[str] | None,
    locked: bool | None,
) -> dict[str, Any]:
    root = Path(working_dir or os.getcwd()).resolve()
    path = manifest if manifest.is_absolute() else root / manifest
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise PixiSpecError(
            f"runtime_env['pixi']['manifest'] {str(manifest)!r} is outside the working_dir "
            f"{str(root)!r}. Put the project inside the working_dir, or pass working_dir=."
        ) from None
    value: dict[str, Any] = {"manifest": relative.as_posix(), "include": list(include),
                             "exclude": list(exclude)}
    if locked is not None:
        value["locked"] = locked
    spec = parse_spec(value)
    assert spec.mode is Mode.PROJECT
    files = project.collect_project_files(root, spec)
    value["digest"] = project.digest_project_files(root, files)
    return value
