"""Install one environment into the store: write its workspace, run `pixi install`,
capture its activation, byte-compile it, check its Python and Ray against the cluster's,
then mark it ready. Under the store's lock, so each environment is installed once per store
however many agents ask for it.

Everything here runs on the runtime_env agent's event loop: file work goes to a thread and
child processes run through `process.run_logged`, so the loop keeps serving other setups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ray_pixi import progress, project, settings
from ray_pixi.activation import Activation, build_activation
from ray_pixi.bytecode import compile_environment, share_bytecode
from ray_pixi.cluster import ClusterInfo, python_mismatch
from ray_pixi.disk import pixi_cache_dir
from ray_pixi.errors import PixiInstallError, PixiSpecError, PixiVersionMismatchError
from ray_pixi.key import STORE_LAYOUT
from ray_pixi.manifest import build_inline_manifest, ray_requirement
from ray_pixi.pixi_cli import PixiExe, pixi_env, run_pixi
from ray_pixi.process import StepTimeout, run_logged
from ray_pixi.records import ReadyRecord
from ray_pixi.solution import Provenance, Solution, lock_sha256
from ray_pixi.spec import Mode, PixiSpec
from ray_pixi.store import Store, directory_size
from ray_pixi.watch import InstallWatch, node_name

__all__ = [
    "SOLVING_NOTE",
    "InstalledEnv",
    "ProjectFiles",
    "WORKSPACE_CONFIG",
    "check_platform",
    "install_environment",
    "is_stale_lock",
    "load_installed",
    "write_workspace",
]

INLINE_MANIFEST_NAME = "pixi.toml"
# pixi merges a workspace's own .pixi/config.toml over the node's configuration, so this
# keeps the environment inside the store (where its key, lock and marker live) even if the
# node's pixi configuration detaches environments elsewhere.
WORKSPACE_CONFIG = (
    "# Written by ray-pixi: the environment stays in this workspace, inside ray-pixi's store,\n"
    "# whatever the node's pixi configuration says.\n"
    "detached-environments = false\n"
)
_PROBE = (
    "import json, sys\n"
    "try:\n"
    "    from importlib.metadata import version\n"
    "    ray = version('ray')\n"
    "except Exception:\n"
    "    ray = None\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'ray': ray}))\n"
)
_PROBE_TIMEOUT_SECONDS = 120.0
#: The install log's line when this install solves a spec for the cluster.
SOLVING_NOTE = "[ray-pixi: solving"
_LOCK_HINT = (
    "pixi.lock does not match the manifest. Run `pixi lock --manifest-path {manifest}` where "
    "the manifest lives, and resubmit with the new pixi.lock."
)
# pixi's own error line for a lock that does not match the manifest (0.13 "lock-file not
# up-to-date with the project" ... 0.70 "lock file not up-to-date with the workspace"), and
# for --frozen without one ("the lock file is not up-to-date with requested environment").
# Its warning for a satisfied lock in an older format ("the lock file is up-to-date but uses
# an older format") is not an error and must not match.
_STALE_LOCK = re.compile(r"lock ?file (is )?not up to date with")


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
    """The ready environment `key`, or None. Blocking (reads the marker)."""
    ready = store.read_ready(key)
    if ready is None or ready.layout != STORE_LAYOUT or ready.activation is None \
            or ready.python is None:
        return None  # a record from another layout: not trusted, reinstalled
    return InstalledEnv(key, ready.activation, ready.size_bytes, ready.python, ready.ray)


def _manifest_relpath(spec: PixiSpec) -> PurePosixPath:
    if spec.mode is Mode.INLINE:
        return PurePosixPath(INLINE_MANIFEST_NAME)
    assert spec.manifest is not None
    # A self-contained manifest keeps only its file name: it has no neighbours.
    path = PurePosixPath(spec.manifest)
    return path if spec.mode is Mode.PROJECT else PurePosixPath(path.name)


def write_workspace(
    spec: PixiSpec, cluster: ClusterInfo, workspace: Path, files: ProjectFiles | None,
    lock: str | None = None,
) -> Path:
    """The workspace pixi installs (or solves) in; returns its manifest. `lock` is the
    cluster's solution, written as the manifest's pixi.lock."""
    workspace.mkdir(parents=True)
    manifest = workspace / _manifest_relpath(spec)
    if spec.mode is Mode.INLINE:
        manifest.write_text(build_inline_manifest(spec, cluster))
    elif spec.mode is Mode.MANIFEST:
        assert spec.manifest_content is not None
        manifest.write_text(spec.manifest_content)
        lock = spec.lock_text()
        if lock is not None:
            (workspace / project.LOCK_NAME).write_text(lock)
    else:
        assert files is not None
        project.copy_project_files(files.root, files.files, workspace)
    if lock is not None:
        (manifest.parent / project.LOCK_NAME).write_text(lock)
    config = manifest.parent / ".pixi" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(WORKSPACE_CONFIG)
    return manifest


def check_platform(spec: PixiSpec, cluster: ClusterInfo) -> None:
    """An inline spec must name this node's platform, if it names platforms at all."""
    if spec.mode is Mode.INLINE and spec.platforms and cluster.platform not in spec.platforms:
        raise PixiSpecError(
            f"runtime_env['pixi']['platforms'] is {list(spec.platforms)}, which does not "
            f"include this node's platform {cluster.platform!r}. Add it, or drop "
            "`platforms` to use the node's own."
        )


def is_stale_lock(log_tail: str) -> bool:
    """Whether pixi failed because pixi.lock does not match the manifest: its error line
    (`Error: × ...`), never its warnings."""
    for line in log_tail.splitlines():
        stripped = line.strip()
        if not (stripped.startswith(("Error:", "×")) or " × " in stripped):
            continue
        text = stripped.lower().replace("-", " ").replace("_", " ")
        if _STALE_LOCK.search(text):
            return True
    return False


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
            f"{settings.MATCH_LEVEL}). Add `{python_line}` under "
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


def env_prefix(shell_hook_json: str, workspace: Path) -> Path:
    """The environment's prefix as pixi reports it (shell-hook's CONDA_PREFIX), which must
    lie inside the workspace: pixi puts environments next to the manifest, so a manifest in
    a subdirectory has its own `.pixi/envs`."""
    try:
        variables = json.loads(shell_hook_json).get("environment_variables") or {}
        prefix = Path(str(variables["CONDA_PREFIX"]))
    except (ValueError, KeyError, AttributeError, TypeError):
        raise PixiInstallError(
            "`pixi shell-hook --json` printed no CONDA_PREFIX, so the environment cannot be "
            f"located: {shell_hook_json[:300]!r}"
        ) from None
    try:
        prefix.resolve().relative_to(workspace.resolve())
    except ValueError:
        raise PixiInstallError(
            f"pixi installed the environment at {prefix}, outside ray-pixi's store "
            f"({workspace}). Something in the node's pixi configuration moves environments "
            "(detached-environments, or a [cache] override): remove it, or point ray-pixi's "
            f"store ({settings.STORE_DIR}) there."
        ) from None
    return prefix


def _expand(value: str, base: dict[str, str]) -> str:
    for name, current in base.items():
        value = value.replace("${" + name + "}", current)
    return value


async def _probe_versions(activation: Activation, log_path: Path) -> dict[str, Any]:
    env = pixi_env()
    env.update({k: _expand(v, env) for k, v in activation.env_vars.items()})
    try:
        done = await run_logged(
            [activation.python, "-I", "-c", _PROBE], log_path=log_path, cwd=Path("/"),
            env=env, capture_stdout=True, timeout=_PROBE_TIMEOUT_SECONDS,
            shown="<env python> -I -c <version probe>",
        )
    except (OSError, StepTimeout) as e:
        raise PixiInstallError(f"The environment's python {activation.python} did not run: "
                               f"{e}.\nFull log: {log_path}", log_path=str(log_path)) from None
    if done.returncode != 0:
        raise PixiInstallError(
            f"The environment's python {activation.python} failed to start (exit code "
            f"{done.returncode}); see the end of the log.\nFull log: {log_path}",
            log_path=str(log_path),
        )
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PixiInstallError(f"The version probe printed {done.stdout[-300:]!r}.\n"
                               f"Full log: {log_path}", log_path=str(log_path)) from None
    return result


def _log_path(store: Store, key: str, session_log_dir: Path | None) -> Path:
    """The attempt's log, in the store (it outlives Ray sessions and pod restarts, and every
    node sharing the store sees it), linked from the Ray session's logs for the dashboard."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = store.install_log(key, f"{stamp}-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    store.prune_install_logs(key)
    if session_log_dir is not None:
        with contextlib.suppress(OSError):
            link = session_log_dir / "pixi" / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return path


def _lock_sha(directory: Path) -> str | None:
    """The sha256 of the pixi.lock the environment was installed from, if there is one."""
    try:
        return lock_sha256((directory / project.LOCK_NAME).read_text())
    except (OSError, UnicodeDecodeError):
        return None


def _note(log_path: Path, line: str) -> None:
    with contextlib.suppress(OSError), open(log_path, "a") as log:
        log.write(line + "\n")


async def install_environment(
    *,
    key: str,
    spec: PixiSpec,
    cluster: ClusterInfo,
    store: Store,
    pixi: PixiExe,
    logger: logging.Logger,
    session_log_dir: Path | None = None,
    files: ProjectFiles | None = None,
    solution: Solution | None = None,
    solving: Provenance | None = None,
) -> tuple[InstalledEnv, bool]:
    """Return the ready environment for `key`, installing it if no process has.

    A spec without a lock installs either `solution` (the cluster's: pixi installs that
    lock `--frozen` and never solves) or, with `solving`, solves for the cluster as it
    installs (the pixi.lock it writes becomes the cluster's solution). Returns
    (environment, whether this call installed it). Anything short of a complete, verified
    install leaves no marker and no workspace.
    """
    provenance = solving if solution is None else Provenance(solution.key, solution.source)
    async with store.installing(key) as install_lock:
        lock_fd = install_lock.fd
        installed = await asyncio.to_thread(load_installed, store, key)
        if installed is not None:
            return installed, False
        failed = await asyncio.to_thread(store.read_failed, key)
        if failed is not None:
            raise PixiVersionMismatchError(failed)
        check_platform(spec, cluster)
        await asyncio.to_thread(store.discard, key)  # what an interrupted install left
        log_path = await asyncio.to_thread(_log_path, store, key, session_log_dir)
        logger.info("Installing pixi environment %s for this job; pixi's output: %s",
                    key, log_path)
        started = time.monotonic()
        watch = InstallWatch(node=node_name(), key=key, logger=logger,
                             progress_path=store.progress_path(key))
        try:
            async with watch:
                return await _install(key, spec, cluster, store, pixi, logger, files,
                                      watch, log_path, lock_fd, started, solution,
                                      provenance)
        except PixiInstallError as e:
            store.discard_in_background(key)
            if spec.install_locked and is_stale_lock(str(e)):
                hint = _LOCK_HINT.format(manifest=spec.manifest)
                raise PixiInstallError(f"{e}\n{hint}", log_path=e.log_path) from None
            raise
        except BaseException:
            store.discard_in_background(key)
            raise


async def _install(
    key: str, spec: PixiSpec, cluster: ClusterInfo, store: Store, pixi: PixiExe,
    logger: logging.Logger, files: ProjectFiles | None, watch: InstallWatch,
    log_path: Path, lock_fd: int, started: float, solution: Solution | None,
    provenance: Provenance | None,
) -> tuple[InstalledEnv, bool]:
    """The install's steps, each announced to `watch`; the caller discards what a failure
    leaves."""
    workspace = store.workspace(key)
    manifest = await asyncio.to_thread(
        write_workspace, spec, cluster, workspace, files,
        None if solution is None else solution.lock)
    common = ["--manifest-path", str(manifest), "--environment", spec.environment]
    lock_args = ["--locked"] if spec.install_locked else []
    if solution is not None:
        lock_args = ["--frozen"]
        await asyncio.to_thread(
            _note, log_path, f"[ray-pixi: installing the cluster's solution {solution.key} "
            f"(pixi.lock sha256 {solution.sha256[:16]}, {solution.source}) as it is]")
    elif provenance is not None:
        await asyncio.to_thread(
            _note, log_path, f"{SOLVING_NOTE} {provenance.key} for the cluster "
            f"({provenance.source})]")
    # Shared: pruning the package cache (ray_pixi.disk) waits until no install
    # can be linking from it.
    watch.phase = progress.SOLVING
    with await store.cache_lock().acquire_async(shared=True) as cache_lock:
        # -v: pixi logs a line at each step, which the progress follows (last, so the
        # log still reads `pixi install --manifest-path ...`).
        await run_pixi(
            pixi, ["install", *common, *lock_args, *spec.pixi_install_options, "-v"],
            log_path=log_path, cwd=workspace, hold_fds=(lock_fd, cache_lock.fd),
            on_line=watch.on_pixi_line,
        )
    installed_at = time.monotonic()
    env = pixi_env()
    if shutil.which("bash", path=env.get("PATH", os.defpath)) is None:
        raise PixiInstallError(
            "There is no bash on this node's PATH: pixi runs an environment's "
            "activation scripts with bash (`pixi shell-hook`), and Ray starts every "
            "worker with `bash -c`. Install bash in the node's image.")
    # --as-is: activate what was just installed; never re-check, re-solve or
    # re-install (pixi would re-run uv for a path dependency without it).
    watch.phase = progress.ACTIVATING
    hook = await run_pixi(
        pixi, ["shell-hook", "--json", "--as-is", *common],
        log_path=log_path, cwd=workspace, capture_stdout=True, hold_fds=(lock_fd,),
    )
    prefix = env_prefix(hook, workspace)
    activation = build_activation(hook, prefix, pixi_env())
    watch.phase = progress.COMPILING
    compile_started = time.monotonic()
    await compile_environment(activation.python, prefix, log_path, lock_fd)
    shared = await asyncio.to_thread(
        share_bytecode, prefix, pixi_cache_dir(pixi_env())[0])
    compiled = time.monotonic() - compile_started
    await asyncio.to_thread(
        _note, log_path, f"[ray-pixi: linked {shared} compiled file(s) into pixi's "
        "cache for later environments]")
    watch.phase = progress.CHECKING
    versions = await _probe_versions(activation, log_path)
    problem = _check_versions(spec, cluster, versions["python"], versions["ray"])
    if problem is not None:
        await asyncio.to_thread(store.write_failed, key, problem)
        raise PixiVersionMismatchError(problem)
    size = await asyncio.to_thread(directory_size, workspace)
    seconds = time.monotonic() - started
    timings = {"pixi_install": round(installed_at - started, 3),
               "bytecode": round(compiled, 3), "total": round(seconds, 3)}
    await asyncio.to_thread(store.write_ready, ReadyRecord(
        key=key,
        layout=STORE_LAYOUT,
        activation=activation,
        prefix=str(prefix),
        size_bytes=size,
        python=versions["python"],
        ray=versions["ray"],
        pixi_version=pixi.version_str,
        mode=spec.mode.value,
        environment=spec.environment,
        manifest=spec.manifest,
        installed_at=time.time(),
        seconds=timings,
        log=str(log_path),
        lock_sha256=await asyncio.to_thread(_lock_sha, manifest.parent),
        solution=None if provenance is None else provenance.key,
        solution_source=None if provenance is None else provenance.source,
    ))
    _note(log_path, f"[ray-pixi: installed {key} in {seconds:.1f} s: pixi install "
                    f"{timings['pixi_install']:.1f} s, bytecode {compiled:.1f} s; "
                    f"{size / 2**20:.0f} MiB]")
    logger.info("Installed pixi environment %s in %.1fs (%d MiB)", key, seconds,
                size // 2**20)
    return InstalledEnv(key, activation, size, versions["python"], versions["ray"]), True
