"""Install one environment into the store: write its workspace, run `pixi install`,
capture its activation, check its Python and Ray against the cluster's, then mark it
ready. Under the store's lock, so each environment is installed once per store however
many agents ask for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ray_pixi import project
from ray_pixi.activation import Activation, build_activation
from ray_pixi.cluster import ClusterInfo, python_mismatch
from ray_pixi.errors import PixiInstallError, PixiSpecError, PixiVersionMismatchError
from ray_pixi.key import STORE_LAYOUT
from ray_pixi.manifest import build_inline_manifest, ray_requirement
from ray_pixi.pixi_cli import PixiExe, pixi_env, run_pixi
from ray_pixi.spec import Mode, PixiSpec
from ray_pixi.store import Store, directory_size

__all__ = ["InstalledEnv", "ProjectFiles", "install_environment", "load_installed"]

INLINE_MANIFEST_NAME = "pixi.toml"
# Besides reading the versions, the probe imports Ray's worker entry point once, so its
# bytecode is written into the environment now: PyPI packages arrive without .pyc files,
# and a worker that may not write them (PYTHONDONTWRITEBYTECODE, a read-only store) would
# otherwise compile Ray on every start (0.5-1.2 s more per worker on 2 cores, measured by
# bench/run).
_PROBE = (
    "import contextlib, importlib, json, sys\n"
    "try:\n"
    "    from importlib.metadata import version\n"
    "    ray = version('ray')\n"
    "except Exception:\n"
    "    ray = None\n"
    "if ray is not None:\n"
    "    with contextlib.redirect_stdout(sys.stderr):\n"
    "        try:\n"
    "            importlib.import_module('ray._private.workers.default_worker')\n"
    "        except Exception:\n"
    "            pass\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'ray': ray}))\n"
)
_LOCK_HINT = (
    "pixi.lock does not match the manifest. Run `pixi lock --manifest-path {manifest}` where "
    "the manifest lives, and resubmit with the new pixi.lock."
)


@dataclass(frozen=True)
class InstalledEnv:
    key: str
    activation: Activation
    size_bytes: int
    python_version: str
    ray_version: str | None


@dataclass(frozen=True)
class ProjectFiles:
    """A project-mode spec's env-defining files as they sit in the downloaded working_dir."""

    root: Path
    files: tuple[str, ...]


def load_installed(store: Store, key: str) -> InstalledEnv | None:
    ready = store.read_ready(key)
    if ready is None:
        return None
    try:
        return InstalledEnv(
            key=key,
            activation=Activation.from_json(ready["activation"]),
            size_bytes=int(ready["size_bytes"]),
            python_version=str(ready["python"]),
            ray_version=ready.get("ray"),
        )
    except (KeyError, TypeError, ValueError):
        return None  # a marker from another layout: not trusted, reinstalled


def _manifest_relpath(spec: PixiSpec) -> PurePosixPath:
    if spec.mode is Mode.INLINE:
        return PurePosixPath(INLINE_MANIFEST_NAME)
    assert spec.manifest is not None
    # A self-contained manifest keeps only its file name: it has no neighbours.
    path = PurePosixPath(spec.manifest)
    return path if spec.mode is Mode.PROJECT else PurePosixPath(path.name)


def _write_workspace(
    spec: PixiSpec, cluster: ClusterInfo, workspace: Path, files: ProjectFiles | None
) -> Path:
    workspace.mkdir(parents=True)
    manifest = workspace / _manifest_relpath(spec)
    if spec.mode is Mode.INLINE:
        manifest.write_text(build_inline_manifest(spec, cluster))
    elif spec.mode is Mode.MANIFEST:
        assert spec.manifest_content is not None
        manifest.write_text(spec.manifest_content)
        if spec.lock_content is not None:
            (workspace / project.LOCK_NAME).write_text(spec.lock_content)
    else:
        assert files is not None
        project.copy_project_files(files.root, files.files, workspace)
    return manifest


def _is_stale_lock(log_tail: str) -> bool:
    text = log_tail.lower().replace("-", " ").replace("_", " ")
    return "lock" in text and "up to date" in text


def _fix_lines(cluster: ClusterInfo) -> tuple[str, str]:
    ray = ray_requirement(cluster.ray_version)
    python_line = f'python = "=={cluster.python_version}"'
    ray_line = f'ray = {{ version = "{ray["version"]}", extras = ["default"] }}'
    return python_line, ray_line


def _check_versions(
    spec: PixiSpec, cluster: ClusterInfo, python: str, ray: str | None
) -> str | None:
    """The user-facing message for an environment Ray would refuse, or None."""
    python_line, ray_line = _fix_lines(cluster)
    where = (
        "the inline spec's dependencies/pypi_dependencies (or drop the key: ray-pixi pins "
        "the cluster's version when it is omitted)"
        if spec.mode is Mode.INLINE
        else f"{spec.manifest}, then run `pixi lock`"
    )
    problems = []
    if python_mismatch(cluster, python):
        problems.append(
            f"it runs Python {python} but the cluster runs {cluster.python_version} (Ray "
            f"compares them at the {cluster.match_level!r} level, "
            f"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL). Add `{python_line}` under "
            f"[dependencies] in {where}"
        )
    if ray != cluster.ray_version:
        problems.append(
            f"it has Ray {ray or '(not installed)'} but the cluster runs "
            f"{cluster.ray_version}. Add `{ray_line}` under [pypi-dependencies] in {where}"
        )
    if not problems:
        return None
    return "Ray would refuse this pixi environment's workers: " + "; and ".join(problems) + "."


def _expand(value: str, base: dict[str, str]) -> str:
    for name, current in base.items():
        value = value.replace("${" + name + "}", current)
    return value


async def _probe_versions(activation: Activation, log_path: Path) -> dict[str, Any]:
    env = pixi_env()
    env.update({k: _expand(v, env) for k, v in activation.env_vars.items()})
    proc = await asyncio.create_subprocess_exec(
        activation.python, "-I", "-c", _PROBE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    with open(log_path, "ab") as log:
        log.write(b"$ <env python> -c <version probe>\n" + out + err)
    if proc.returncode != 0:
        raise PixiInstallError(
            f"The environment's python {activation.python} failed to start (exit code "
            f"{proc.returncode}): {err.decode(errors='replace').strip()[-2000:]}\n"
            f"Full log: {log_path}", log_path=str(log_path),
        )
    result: dict[str, Any] = json.loads(out)
    return result


def _log_path(log_dir: Path, key: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return log_dir / "pixi" / f"install-{key}-{stamp}-{os.getpid()}.log"


async def install_environment(
    *,
    key: str,
    spec: PixiSpec,
    cluster: ClusterInfo,
    store: Store,
    pixi: PixiExe,
    log_dir: Path,
    logger: logging.Logger,
    files: ProjectFiles | None = None,
) -> tuple[InstalledEnv, bool]:
    """Return the ready environment for `key`, installing it if no process has.

    Returns (environment, whether this call installed it). Anything short of a complete,
    verified install leaves no marker and no workspace.
    """
    async with store.installing(key):
        installed = load_installed(store, key)
        if installed is not None:
            return installed, False
        failed = store.read_failed(key)
        if failed is not None:
            raise PixiVersionMismatchError(failed)
        if spec.mode is Mode.INLINE and spec.platforms and cluster.platform not in spec.platforms:
            raise PixiSpecError(
                f"runtime_env['pixi']['platforms'] is {list(spec.platforms)}, which does not "
                f"include this node's platform {cluster.platform!r}. Add it, or drop "
                "`platforms` to use the node's own."
            )
        store.discard(key)  # whatever an interrupted install left behind
        workspace = store.workspace(key)
        log_path = _log_path(log_dir, key)
        logger.info("Installing pixi environment %s for this job; pixi's output: %s",
                    key, log_path)
        started = time.monotonic()
        try:
            manifest = _write_workspace(spec, cluster, workspace, files)
            common = ["--manifest-path", str(manifest), "--environment", spec.environment]
            lock_args = ["--locked"] if spec.install_locked else []
            await run_pixi(
                pixi, ["install", *common, *lock_args, *spec.pixi_install_options],
                log_path=log_path, cwd=workspace,
            )
            hook = await run_pixi(
                pixi, ["shell-hook", "--json", *common, "--frozen"],
                log_path=log_path, cwd=workspace, capture_stdout=True,
            )
            prefix = workspace / ".pixi" / "envs" / spec.environment
            activation = build_activation(hook, prefix, pixi_env())
            versions = await _probe_versions(activation, log_path)
            problem = _check_versions(spec, cluster, versions["python"], versions["ray"])
            if problem is not None:
                store.write_failed(key, problem)
                raise PixiVersionMismatchError(problem)
            size = directory_size(workspace)
            store.write_ready(key, {
                "layout": STORE_LAYOUT,
                "activation": activation.to_json(),
                "size_bytes": size,
                "python": versions["python"],
                "ray": versions["ray"],
                "pixi_version": pixi.version_str,
                "mode": spec.mode.value,
                "environment": spec.environment,
                "manifest": spec.manifest,
                "installed_at": time.time(),
                "install_seconds": round(time.monotonic() - started, 3),
                "log": str(log_path),
            })
        except PixiInstallError as e:
            with contextlib.suppress(OSError):
                store.discard(key)
            if spec.install_locked and _is_stale_lock(str(e)):
                hint = _LOCK_HINT.format(manifest=spec.manifest)
                raise PixiInstallError(f"{e}\n{hint}", log_path=e.log_path) from None
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                store.discard(key)
            raise
        logger.info("Installed pixi environment %s in %.1fs (%d MB)", key,
                    time.monotonic() - started, size // 2**20)
        return InstalledEnv(key, activation, size, versions["python"], versions["ray"]), True
