"""`PixiPlugin`: the Ray runtime_env plugin, a thin adapter from Ray's plugin protocol to
the spec, key, store and install modules.

Ray builds it with no arguments inside the runtime_env agent, so it reads its directories
from the agent's command line and documented environment variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ray._private.runtime_env.context import RuntimeEnvContext
from ray._private.runtime_env.plugin import RuntimeEnvPlugin

from ray_pixi import project
from ray_pixi.bootstrap import install_pixi_release
from ray_pixi.cluster import ClusterInfo
from ray_pixi.errors import PixiNotFoundError, PixiSpecError
from ray_pixi.install import InstalledEnv, ProjectFiles, install_environment, load_installed
from ray_pixi.key import build_env_key, key_from_uri, uri_for_key
from ray_pixi.pixi_cli import PixiExe, check_min_version, find_pixi_on_node, read_pixi_version
from ray_pixi.spec import FIELD, Mode, PixiSpec, parse_runtime_env
from ray_pixi.store import FileLock, Store

__all__ = ["PIXI_VERSION_VAR", "STORE_DIR_VAR", "PixiPlugin", "default_store_dir"]

default_logger = logging.getLogger(__name__)

#: Where environments live; put it on a persistent volume to keep them across restarts.
STORE_DIR_VAR = "RAY_PIXI_STORE_DIR"
#: The pixi release every node uses unless a spec pins `pixi_version`.
PIXI_VERSION_VAR = "RAY_PIXI_PIXI_VERSION"
_SPEC_CACHE_SIZE = 256


def default_store_dir() -> Path:
    explicit = os.environ.get(STORE_DIR_VAR)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ray-pixi" / "store"


def agent_flag(name: str, argv: list[str] | None = None) -> str | None:
    """A `--name=value` flag from the runtime_env agent's command line."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


class PixiPlugin(RuntimeEnvPlugin):
    """Installs `runtime_env["pixi"]` once per node and starts workers inside it."""

    name = FIELD

    def __init__(self) -> None:
        self._store = Store(default_store_dir())
        self._store.sweep()
        self._cluster = ClusterInfo.current()
        log_dir = agent_flag("log-dir")
        self._log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "ray-pixi"
        self._resources_dir = agent_flag("runtime-env-dir")
        self._specs: OrderedDict[str, PixiSpec] = OrderedDict()
        self._installed: dict[str, InstalledEnv] = {}
        self._booked: dict[str, int] = {}  # URI -> bytes reported to Ray's URI cache
        self._use_fds: dict[str, int] = {}  # key -> our shared lock marking it in use
        self._locks: dict[str, asyncio.Lock] = {}
        self._project_keys: dict[tuple[str, str], tuple[str, ProjectFiles]] = {}

    # -- Ray's protocol ------------------------------------------------------------------
    @staticmethod
    def validate(runtime_env_dict: dict[str, Any]) -> None:
        parse_runtime_env(runtime_env_dict)

    def get_uris(self, runtime_env: Any) -> list[str]:
        if runtime_env.get(FIELD) is None:
            return []  # the agent asks every plugin about every runtime_env
        spec = self._spec(runtime_env)
        if spec.mode is Mode.PROJECT and spec.digest is None:
            return []  # keyed by working_dir content, known only once Ray downloads it
        return [uri_for_key(build_env_key(spec, self._cluster, self._pixi_version_for(spec)))]

    async def create(
        self,
        uri: str | None,
        runtime_env: Any,
        context: RuntimeEnvContext,
        logger: logging.Logger = default_logger,
    ) -> float:
        spec = self._spec(runtime_env)
        if uri is None:
            key, files = self._project_key(spec, runtime_env)
        else:
            key, files = key_from_uri(uri), None
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._installed:
                self._hold(key)
                env = load_installed(self._store, key)
                if env is None:
                    if spec.mode is Mode.PROJECT and files is None:
                        files = self._verified_project_files(spec, runtime_env)
                    env, _ = await install_environment(
                        key=key, spec=spec, cluster=self._cluster, store=self._store,
                        pixi=await self._resolve_pixi(spec), log_dir=self._log_dir,
                        logger=logger, files=files,
                    )
                else:
                    logger.info("Reusing pixi environment %s from %s", key, self._store.root)
                self._installed[key] = env
        self._store.touch(key)
        if uri is None or uri in self._booked:
            return 0  # Ray books a URI once per add; never count the same bytes twice
        self._booked[uri] = self._installed[key].size_bytes
        return self._booked[uri]

    def modify_context(
        self,
        uris: list[str],
        runtime_env: Any,
        context: RuntimeEnvContext,
        logger: logging.Logger = default_logger,
    ) -> None:
        if uris:
            key = key_from_uri(uris[0])
        else:
            key, _ = self._project_key(self._spec(runtime_env), runtime_env)
        env = self._installed.get(key) or load_installed(self._store, key)
        if env is None:
            raise RuntimeError(f"pixi environment {key} is not installed on this node; "
                               "its setup did not finish. Resubmit the job.")
        context.py_executable = env.activation.py_executable()
        context.env_vars = env.activation.worker_env_vars(context.env_vars)

    def delete_uri(self, uri: str, logger: logging.Logger = default_logger) -> float:
        """Forget `uri`; free its environment's disk unless another URI of this agent or
        another agent sharing the store still uses it. Never raises."""
        booked = self._booked.pop(uri, 0)
        try:
            key = key_from_uri(uri)
        except ValueError:
            return booked
        if any(key_from_uri(other) == key for other in self._booked):
            return booked
        self._installed.pop(key, None)
        fd = self._use_fds.pop(key, None)
        if fd is not None:
            FileLock.release(fd)
        try:
            freed = self._store.delete_if_unused(key)
        except OSError as e:
            logger.warning("Could not delete pixi environment %s: %s", key, e)
            return booked
        logger.info("%s pixi environment %s (%d bytes)",
                    "Deleted" if freed else "Kept (in use elsewhere)", key, booked)
        return booked

    # -- helpers -------------------------------------------------------------------------
    def _spec(self, runtime_env: Any) -> PixiSpec:
        """Parsed spec, cached: the plugin pipeline re-runs on most worker starts."""
        raw = runtime_env.get(FIELD)
        cache_key = raw if isinstance(raw, str) else repr(sorted(raw.items())) \
            if isinstance(raw, dict) else repr(raw)
        spec = self._specs.get(cache_key)
        if spec is None:
            spec = parse_runtime_env(runtime_env)
            self._specs[cache_key] = spec
            if len(self._specs) > _SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return spec

    def _hold(self, key: str) -> None:
        """Mark `key` used by this agent so no other agent deletes it under our workers."""
        if key not in self._use_fds:
            self._use_fds[key] = self._store.use_lock(key).acquire(shared=True)

    def _pixi_version_for(self, spec: PixiSpec) -> str:
        wanted = spec.pixi_version or os.environ.get(PIXI_VERSION_VAR)
        if wanted:
            return wanted
        found = find_pixi_on_node()
        if found is None:
            raise PixiNotFoundError(
                "No pixi found on this node: RAY_PIXI_EXE is unset and `pixi` is not on the "
                "PATH of the Ray processes. Install pixi on the node (or set RAY_PIXI_EXE), "
                f"or set pixi_version in the spec (or {PIXI_VERSION_VAR} on the node) to have "
                "ray-pixi fetch a verified release."
            )
        return found.version_str

    async def _resolve_pixi(self, spec: PixiSpec) -> PixiExe:
        wanted = spec.pixi_version or os.environ.get(PIXI_VERSION_VAR)
        found = find_pixi_on_node()
        if found is not None and (wanted is None or found.version_str == wanted):
            return found
        if wanted is None:
            self._pixi_version_for(spec)  # raises the not-found message
        assert wanted is not None
        lock = self._store.bootstrap_lock(wanted)
        fd = await lock.acquire_async()
        try:
            path = await asyncio.to_thread(
                install_pixi_release, wanted, self._cluster.platform, self._store.pixi_dir
            )
        finally:
            FileLock.release(fd)
        return check_min_version(PixiExe(str(path), read_pixi_version(str(path))))

    def _working_dir(self, runtime_env: Any) -> Path:
        from ray._private.runtime_env.packaging import (
            get_local_dir_from_uri,
            get_local_dir_uri_path,
        )

        uri = runtime_env.get("working_dir")
        if not uri:
            raise PixiSpecError("runtime_env['pixi'] names a manifest in the working_dir, but "
                                "the runtime_env has no working_dir.")
        local = get_local_dir_uri_path(uri)
        if local is not None:
            return Path(local)
        if self._resources_dir:
            return Path(get_local_dir_from_uri(
                uri, os.path.join(self._resources_dir, "working_dir_files")))
        return Path(os.environ["RAY_RUNTIME_ENV_CREATE_WORKING_DIR"])

    def _project_files(self, spec: PixiSpec, runtime_env: Any) -> tuple[str, ProjectFiles]:
        root = self._working_dir(runtime_env)
        files = tuple(project.collect_project_files(root, spec))
        return project.digest_project_files(root, files), ProjectFiles(root, files)

    def _verified_project_files(self, spec: PixiSpec, runtime_env: Any) -> ProjectFiles:
        digest, files = self._project_files(spec, runtime_env)
        if digest != spec.digest:
            raise PixiSpecError(
                "The env-defining files in the working_dir Ray uploaded differ from those "
                f"pixi() hashed on the driver (digest {digest} != {spec.digest}); files: "
                f"{list(files.files)}. Ray skips files matched by .gitignore or "
                "runtime_env['excludes']: make sure every manifest, lock and include file is "
                "uploaded, then resubmit."
            )
        return files

    def _project_key(self, spec: PixiSpec, runtime_env: Any) -> tuple[str, ProjectFiles]:
        """Key of a project spec without a driver digest, from the downloaded files;
        cached per working_dir URI, which is itself content-addressed."""
        cache_key = (str(runtime_env.get("working_dir")), spec.canonical_json())
        if cache_key not in self._project_keys:
            digest, files = self._project_files(spec, runtime_env)
            key = build_env_key(spec, self._cluster, self._pixi_version_for(spec), digest)
            self._project_keys[cache_key] = (key, files)
        return self._project_keys[cache_key]
