"""`PixiNode`: the plugin's work on one Ray node, behind the entry point Ray imports
(`ray_pixi.plugin.PixiPlugin`). A thin adapter from Ray's plugin protocol to the spec, key,
store and install modules.

Ray builds the plugin with no arguments inside the runtime_env agent, so this reads its
directories from the agent's command line and documented environment variables. Nothing
here may stall the agent's event loop: disk work runs in threads, processes run through
`process.run_logged`, and nothing touches the disk while Ray builds the plugin.

How Ray's calls map onto environments:

- `get_uris` (in `ray_pixi.uris`) hashes the runtime_env alone. `create` maps each URI to a
  store key, computed here from the spec, the node's pixi and platform and the cluster's
  Python and Ray; several URIs may share one key (the same project uploaded twice).
- An environment is held (a shared lock on its use file) from `create` until Ray evicts the
  last URI mapping to it, so neither another agent sharing the store nor `ray-pixi envs`
  deletes it under a running worker.
- A spec without a lock is solved once per cluster (`ray_pixi.sharing`): the node that
  solves does so as it installs; every other node installs that pixi.lock `--frozen`.
- Ray's URI cache caps what one agent books. The store is capped too, across agents and Ray
  sessions: after each install, least-recently-used environments that no process holds are
  deleted until the store fits `RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB`.
- The node's settings (`ray_pixi.settings`) are read once, when Ray builds the plugin. A
  malformed one fails every pixi request with its name, value and fix; other jobs run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pixi import project, rayapi, settings
from ray_pixi.bootstrap import install_pixi_release
from ray_pixi.cluster import ClusterInfo
from ray_pixi.disk import enforce_disk_budget, pixi_cache_dir
from ray_pixi.errors import PixiInstallError, PixiNotFoundError, PixiSpecError
from ray_pixi.install import (
    InstalledEnv,
    ProjectFiles,
    check_platform,
    install_environment,
    load_installed,
)
from ray_pixi.key import build_env_key
from ray_pixi.pixi_cli import PixiExe, check_min_version, find_pixi_on_node, read_pixi_version
from ray_pixi.settings import InvalidSettings, NodeSettings
from ray_pixi.sharing import SharedSolutions
from ray_pixi.solution import Provenance, Solution, lock_sha256, shares_solution, solution_key
from ray_pixi.spec import Mode, PixiSpec, parse_runtime_env_cached
from ray_pixi.store import HeldLock, Store
from ray_pixi.watch import node_name
from ray_pixi.workers import worker_env_vars

if TYPE_CHECKING:
    # Only for typing: Ray hands create/modify_context its context, which is used by
    # attribute alone, so no Ray release can lack what this module imports.
    from ray._private.runtime_env.context import RuntimeEnvContext

__all__ = ["PixiNode", "wanted_pixi_version"]

default_logger = logging.getLogger(__name__)
# Ray calls delete_uri with its uri_cache module's logger, which nothing in the agent writes out
# (the agent's own logger does not propagate): what eviction did goes to the agent's logger,
# whose file is runtime_env_agent.log. Ray's agent/main.py imports its module as a top-level
# `runtime_env_agent` (its directory is put on sys.path), so that is the logger's name.
_UNWRITTEN_LOGGERS = ("ray._private.runtime_env.uri_cache", __name__)
_AGENT_LOGGERS = ("runtime_env_agent", "ray._private.runtime_env.agent.runtime_env_agent")


def _written(logger: logging.Logger) -> logging.Logger:
    """A logger whose lines reach a file: `logger` itself unless it is one nobody writes."""
    if logger.name not in _UNWRITTEN_LOGGERS:
        return logger
    for name in _AGENT_LOGGERS:
        if name in logging.root.manager.loggerDict and logging.getLogger(name).handlers:
            return logging.getLogger(name)
    return logger

# Last use is recorded on every setup, but written at most this often per environment.
_TOUCH_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class _Booking:
    """A URI `create` set up: its store key, and the bytes booked for it in Ray's URI cache
    (0 when another URI already booked the same environment)."""

    key: str
    size_bytes: int


@dataclass
class _Solved:
    """The environment a setup installed while solving for the cluster, if it did."""

    key: str | None = None
    installed: bool = False


@dataclass
class _Held:
    """An environment this agent holds: its shared use lock, from the first `create` until
    Ray evicts the last URI mapping to it; the environment once installed; and when its use
    was last written to the store (monotonic)."""

    lock: HeldLock
    env: InstalledEnv | None = None
    touched: float = float("-inf")


def wanted_pixi_version(spec: PixiSpec, node_pin: str | None) -> str | None:
    """The pixi release this spec must run with: its own pin, else the node's."""
    return spec.pixi_version or node_pin


class PixiNode:
    """Installs `runtime_env["pixi"]` once per node and starts workers inside it."""

    def __init__(self) -> None:
        self._invalid: InvalidSettings | None = None
        self._node_settings: NodeSettings | None = None
        self._node_store: Store | None = None
        self._node_cluster: ClusterInfo | None = None
        try:
            self._node_settings = settings.read(os.environ)
        except InvalidSettings as e:  # raised on every pixi request; the node stays up
            self._invalid = e
            default_logger.error("ray-pixi cannot serve pixi requests on this node:\n%s", e)
        else:
            self._node_store = Store(self._node_settings.store_dir)
            self._node_cluster = ClusterInfo.current(self._node_settings.python_match_level)
        self._store_ready = False
        log_dir = settings.agent_flag(settings.LOG_DIR_FLAG)
        self._session_log_dir = Path(log_dir) if log_dir else None
        self._resources_dir = settings.agent_flag(settings.RUNTIME_ENV_DIR_FLAG)
        # What Ray's plugin contract needs, as in Ray's uv plugin: one create at a time per
        # URI, what each URI booked, and (several URIs may share one) the environments held.
        self._setups: dict[str, asyncio.Lock] = {}  # URI -> its create lock
        self._uris: dict[str, _Booking] = {}  # URI -> store key and bytes booked
        self._held: dict[str, _Held] = {}  # store key -> our use lock and the environment
        self._solutions = SharedSolutions.for_agent(node_name())
        # Leftovers of crashed installs are swept off the agent's startup path.
        if self._node_store is not None:
            threading.Thread(target=self._sweep, name="ray-pixi-sweep", daemon=True).start()

    @property
    def _settings(self) -> NodeSettings:
        if self._node_settings is None:
            assert self._invalid is not None
            raise self._invalid
        return self._node_settings

    @property
    def _store(self) -> Store:
        self._settings  # noqa: B018 - raises what is wrong with the node's settings
        assert self._node_store is not None
        return self._node_store

    @property
    def _cluster(self) -> ClusterInfo:
        self._settings  # noqa: B018 - raises what is wrong with the node's settings
        assert self._node_cluster is not None
        return self._node_cluster

    # -- Ray's protocol ------------------------------------------------------------------
    def validate(self, runtime_env: Any) -> None:
        self._settings  # noqa: B018 - a malformed node setting fails the request first
        parse_runtime_env_cached(runtime_env)

    async def create(
        self,
        uri: str | None,
        runtime_env: Any,
        context: RuntimeEnvContext,
        logger: logging.Logger = default_logger,
    ) -> int:
        spec = parse_runtime_env_cached(runtime_env)
        uri = uri or ""
        async with self._setups.setdefault(uri, asyncio.Lock()):
            if uri in self._uris:
                return 0  # another setup of this URI finished while we waited
            key, pixi, files, digest, shared = await self._resolve(spec, runtime_env)
            solution, solved = None, _Solved()
            if shared is not None:
                solution = await self._agree(shared, key, spec, pixi, files, logger, solved)
                key = await asyncio.to_thread(
                    self._installed_from, key, solution, spec, pixi, digest)
            held = await self._hold(key)
            try:
                # Read back under the hold, never taken from the solve: between the solve's
                # install and the hold, an eviction may have deleted it (then: install it).
                env = held.env or await asyncio.to_thread(load_installed, self._store, key)
                installed = solved.installed and solved.key == key
                if env is None:
                    env, installed = await install_environment(
                        key=key, spec=spec, cluster=self._cluster, store=self._store,
                        pixi=pixi, session_log_dir=self._session_log_dir, logger=logger,
                        files=files, solution=solution,
                    )
                elif not installed:
                    logger.info("Reusing pixi environment %s from %s", key, self._store.root)
            except BaseException:
                self._release_unless_used(key)  # a failed setup holds nothing
                raise
            # Held again if Ray evicted another URI of this environment meanwhile.
            held = await self._hold(key)
            held.env = env
            # Ray adds each URI's bytes to its cache total: book one environment once.
            booking = _Booking(key, 0 if self._in_use(key) else env.size_bytes)
            self._uris[uri] = booking
        self._touch(key, force=True)
        if installed:
            self._evict_in_background(key, logger)
        return booking.size_bytes

    def modify_context(
        self,
        uris: list[str],
        runtime_env: Any,
        context: RuntimeEnvContext,
        logger: logging.Logger = default_logger,
    ) -> None:
        booking = self._uris.get(uris[0] if uris else "")
        held = self._held.get(booking.key) if booking else None
        if booking is None or held is None or held.env is None:
            raise RuntimeError("This node's ray-pixi has no record of the environment for "
                               f"{uris}; its setup did not finish. Resubmit the job.")
        context.py_executable = held.env.activation.py_executable()
        context.env_vars = worker_env_vars(held.env.activation, context.env_vars)
        self._touch(booking.key)

    def delete_uri(self, uri: str, logger: logging.Logger = default_logger) -> int:
        """Forget `uri`; free its environment's disk unless another URI of this agent, or
        another process sharing the store, still uses it. Never raises, never blocks: Ray
        calls it on the agent's event loop."""
        logger = _written(logger)
        booking = self._uris.pop(uri, None)
        self._setups.pop(uri, None)
        if booking is None:
            logger.info("Ray evicted %s, which this ray-pixi never set up", uri)
            return 0
        key, booked = booking.key, booking.size_bytes
        if self._in_use(key):
            logger.info("Ray evicted %s; pixi environment %s stays: another runtime_env on "
                        "this node uses it", uri, key)
            return booked
        held = self._held.pop(key, None)
        if held is not None:
            held.lock.release()
        try:
            freed = self._store.delete_if_unused(key)
        except OSError as e:
            logger.warning("Could not delete pixi environment %s: %s", key, e)
            return booked
        logger.info("%s pixi environment %s (%d bytes booked)",
                    "Deleted" if freed else "Kept (in use elsewhere)", key, booked)
        return booked

    async def key_for(self, runtime_env: Any) -> str:
        """The store key this node installs `runtime_env`'s environment under (as far as
        this node knows: a spec without a lock by the solution its store kept). Solves
        nothing."""
        spec = parse_runtime_env_cached(runtime_env)
        key, pixi, _, digest, shared = await self._resolve(spec, runtime_env)
        kept = None if shared is None else \
            await asyncio.to_thread(self._store.read_solution, shared)
        if shared is None or kept is None:
            return key
        return await asyncio.to_thread(self._installed_from, key, Solution(shared, kept, "kept"),
                                       spec, pixi, digest)

    # -- helpers -------------------------------------------------------------------------
    async def _resolve(
        self, spec: PixiSpec, runtime_env: Any
    ) -> tuple[str, PixiExe, ProjectFiles | None, str | None, str | None]:
        """The store key, the pixi that installs it, a project's files and their digest,
        and for a spec without a lock the key of the cluster's solution."""
        await self._open_store()
        pixi = await self._resolve_pixi(spec)
        files: ProjectFiles | None = None
        digest = None
        if spec.mode is Mode.PROJECT:
            files, digest = await asyncio.to_thread(
                self._project_files, spec, self._working_dir(runtime_env))
        key = build_env_key(spec, self._cluster, pixi.version_str, digest)
        shared = None
        if shares_solution(spec):
            check_platform(spec, self._cluster)  # before a solve could fail less clearly
            shared = solution_key(spec, self._cluster, pixi.version_str, digest)
        return key, pixi, files, digest, shared

    async def _agree(self, shared: str, key: str, spec: PixiSpec, pixi: PixiExe,
                     files: ProjectFiles | None, logger: logging.Logger,
                     solved: _Solved) -> Solution:
        """The cluster's solution `shared`: another node's, or solved here by installing
        `key` without a lock (which `solved` then holds)."""

        async def solve(source: str) -> str:
            env, installed = await install_environment(
                key=key, spec=spec, cluster=self._cluster, store=self._store, pixi=pixi,
                session_log_dir=self._session_log_dir, logger=logger, files=files,
                solving=Provenance(shared, source))
            solved.key, solved.installed = key, installed
            path = await asyncio.to_thread(self._store.lock_file, key)
            if path is None:
                raise PixiInstallError(f"pixi installed environment {key} but wrote no "
                                       "pixi.lock, so there is no solution to share")
            return await asyncio.to_thread(path.read_text)

        return await self._solutions.obtain(key=shared, store=self._store, solve=solve,
                                            logger=logger)

    def _installed_from(self, key: str, solution: Solution, spec: PixiSpec, pixi: PixiExe,
                        digest: str | None) -> str:
        """`key`, unless the environment there was installed from another lock than the
        cluster's solution (a store from an earlier cluster): then a key of its own, so a
        node never runs another solution than the cluster's. Blocking."""
        record = self._store.read_ready(key)
        if record is None:
            return key
        sha = record.lock_sha256
        if sha is None:
            path = self._store.lock_file(key)
            sha = None if path is None else lock_sha256(path.read_text())
        if sha == solution.sha256:
            return key
        return build_env_key(spec, self._cluster, pixi.version_str, digest, solution.sha256)

    def _sweep(self) -> None:
        try:
            self._store.ensure()
            removed = self._store.sweep()
        except Exception as e:  # noqa: BLE001 - reported by the next pixi request instead
            default_logger.warning("ray-pixi could not sweep its store %s: %s",
                                   self._store.root, e)
            return
        if removed:
            default_logger.info("ray-pixi swept %d unfinished install(s) from %s",
                                len(removed), self._store.root)

    async def _open_store(self) -> None:
        if not self._store_ready:
            await asyncio.to_thread(self._store.ensure)  # raises PixiStoreError with the fix
            self._store_ready = True

    async def _hold(self, key: str) -> _Held:
        """Mark `key` used by this agent, so no other process deletes it under our workers.
        Waits in a thread while a deletion holds the lock."""
        held = self._held.get(key)
        if held is None:
            lock = await self._store.use_lock(key).acquire_async(shared=True)
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(lock)
            else:  # another URI's setup took it while we waited: one lock per environment
                lock.release()
        return held

    def _in_use(self, key: str) -> bool:
        """Whether a URI Ray has booked maps to `key`."""
        return any(booking.key == key for booking in self._uris.values())

    def _release_unless_used(self, key: str) -> None:
        held = self._held.get(key)
        if held is not None and held.env is None and not self._in_use(key):
            del self._held[key]
            held.lock.release()

    def _touch(self, key: str, force: bool = False) -> None:
        """Record a use for LRU eviction and `ray-pixi envs`, off the event loop."""
        held = self._held.get(key)
        now = time.monotonic()
        if held is not None:
            if not force and now - held.touched < _TOUCH_EVERY_SECONDS:
                return
            held.touched = now
        try:
            asyncio.get_running_loop().run_in_executor(None, self._store.touch, key)
        except RuntimeError:  # no loop (a direct call in a test): touch inline
            self._store.touch(key)

    def _evict_in_background(self, keep: str, logger: logging.Logger) -> None:
        """After an install: the store's cap, then the disk budget of store plus cache."""
        held = frozenset(self._held) | {keep}

        def evict() -> None:
            try:
                evicted = self._store.evict_over_cap(self._settings.cache_cap_bytes, held)
                budget = self._settings.disk_budget_bytes
                pruned = None
                if budget is not None:
                    cache, _ = pixi_cache_dir(os.environ)
                    pruned = enforce_disk_budget(self._store, cache, budget, held)
            except Exception as e:  # noqa: BLE001 - an eviction failing must not fail a job
                logger.warning("ray-pixi could not enforce the store's cap: %s", e)
                return
            if evicted:
                logger.info("ray-pixi evicted %d least-recently-used environment(s) to keep "
                            "%s under %g GiB: %s", len(evicted), self._store.root,
                            self._settings.cache_cap_bytes / 2**30, evicted)
            if pruned is not None and pruned.before != pruned.after:
                logger.info("ray-pixi pruned %d unused package(s) from pixi's cache and %d "
                            "environment(s): %d -> %d MiB (budget %d MiB)",
                            pruned.cache_entries, len(pruned.environments),
                            pruned.before // 2**20, pruned.after // 2**20, (budget or 0) // 2**20)

        threading.Thread(target=evict, name="ray-pixi-evict", daemon=True).start()

    async def _resolve_pixi(self, spec: PixiSpec) -> PixiExe:
        """The node's pixi, unless a version is pinned that it does not have: then the
        pinned release, fetched and verified. A pin rescues a node whose own pixi is
        missing, too old or broken."""
        wanted = wanted_pixi_version(spec, self._settings.pixi_version)
        try:
            found = await asyncio.to_thread(find_pixi_on_node)
        except PixiNotFoundError:
            if wanted is None:
                raise
            found = None
        if found is not None and (wanted is None or found.version_str == wanted):
            return found
        if wanted is None:
            raise PixiNotFoundError(
                f"No pixi found on this node: {settings.PIXI_EXE} is unset and `pixi` is not on "
                "the PATH of the Ray processes. Install pixi on the node (or set "
                f"{settings.PIXI_EXE}), or set pixi_version in the spec (or "
                f"{settings.PIXI_VERSION} on the node) to have "
                "ray-pixi fetch a verified release."
            )
        with await self._store.bootstrap_lock(wanted).acquire_async():
            path = await asyncio.to_thread(
                install_pixi_release, wanted, self._cluster.platform, self._store.pixi_dir,
                self._settings.download_url)
            version = await asyncio.to_thread(read_pixi_version, str(path))
        return check_min_version(PixiExe(str(path), version))

    def _working_dir(self, runtime_env: Any) -> Path:
        uri = runtime_env.get("working_dir")
        local = rayapi.local_working_dir(uri)
        if local is not None:
            return local
        if self._resources_dir:
            return rayapi.uploaded_working_dir(
                uri, os.path.join(self._resources_dir, "working_dir_files"))
        return Path(os.environ[settings.CREATE_WORKING_DIR])

    @staticmethod
    def _project_files(spec: PixiSpec, root: Path) -> tuple[ProjectFiles, str]:
        """The env-defining files exactly as Ray uploaded them, and their digest."""
        if not root.is_dir():
            raise PixiSpecError(f"runtime_env['working_dir'] was not downloaded to {root}; "
                                "resubmit the job.")
        files = tuple(project.collect_project_files(root, spec))
        return ProjectFiles(root, files), project.digest_project_files(root, files)
