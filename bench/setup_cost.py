"""The plugin's own time per setup of an installed environment, called in-process on the
plugin object the way the runtime_env agent calls it: for an inline spec, a project with
many files, and the large-lock route (a project whose pixi.lock is megabytes, in project
mode: the lock travels in the working_dir, the runtime_env carries only its digest).

Two paths per runtime_env:
- Ray's URI cache hit (every later worker start): `validate`, `get_uris`, `modify_context`;
  Ray also calls `get_uris` when it counts the worker's references (once as the worker
  starts, once as it exits), so a worker start costs validate + 3 x get_uris +
  modify_context of plugin time.
- Ray's URI cache miss with the environment installed (a new agent after a restart, another
  node sharing the store, a URI Ray evicted): `create` on a new plugin object.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CLUSTER_PYTHON,
    Node,
    Table,
    inline_spec,
    log,
    median,
    percentile,
)
from integration.projects import manifest_text, write_package

QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.WARNING)
HIT_STEPS = ("validate", "get_uris", "modify_context")


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def write_project(n: Node, root: Path, files: int) -> None:
    """A project working_dir: pixi.toml + pixi.lock, an editable local package, and
    `files` other files (data, notebooks) that are not env-defining."""
    write_package(root / "mypkg", 1)
    (root / "pixi.toml").write_text(manifest_text(
        "proj", pypi={"mypkg": {"path": "./mypkg", "editable": True}}, ray_version=ray_version()))
    n.run_pixi(["lock", "--manifest-path", str(root / "pixi.toml")], cwd=root)
    per_dir = 100
    for i in range(files):
        d = root / "data" / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.txt").write_text(f"{i}\n")


def write_big_lock_project(n: Node, root: Path, packages: int, environments: int) -> int:
    """A project whose pixi.lock is megabytes: `packages` tiny conda packages from a local
    channel (tests/realpixi/bulk.py, built once per machine) in 1 + `environments`
    environments. Returns the lock's size in bytes."""
    from realpixi.bulk import build_bulk_channel, build_bulk_manifest
    from support import persistent_cache

    bulk = build_bulk_channel(packages, persistent_cache("conda-channel-bulk"))
    root.mkdir(parents=True)
    (root / "pixi.toml").write_text(build_bulk_manifest("big", CLUSTER_PYTHON, ray_version(),
                                                        bulk, environments=environments))
    n.run_pixi(["lock", "--manifest-path", str(root / "pixi.toml")], cwd=root)
    return (root / "pixi.lock").stat().st_size


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per step: microseconds at p50, p90, p99 and max (the raw report keeps no more)."""
    return {step: {"n": len(xs), **{f"p{q}_us": round(percentile(xs, q) * 1e6, 1)
                                    for q in (50, 90, 99, 100)}}
            for step, xs in times.items() if xs}


def _context() -> Any:
    from ray._private.runtime_env.context import RuntimeEnvContext

    return RuntimeEnvContext(env_vars={"USER_VAR": "1"})


def _join_sweeps() -> None:
    """A new plugin sweeps its store in a thread; let it finish before timing."""
    for t in threading.enumerate():
        if t.name == "ray-pixi-sweep":
            t.join()


def measure_hits(plugin: Any, make_env: Any, iterations: int) -> dict[str, list[float]]:
    """Ray's pipeline on a URI-cache hit, each time on a freshly built RuntimeEnv (Ray
    deserializes one per request; building it is Ray's cost, not timed)."""
    times: dict[str, list[float]] = {s: [] for s in (*HIT_STEPS, "worker start")}
    for _ in range(iterations):
        runtime_env, context = make_env(), _context()
        t0 = time.perf_counter()
        plugin.validate(runtime_env)
        t1 = time.perf_counter()
        uris = plugin.get_uris(runtime_env)
        t2 = time.perf_counter()
        plugin.modify_context(uris, runtime_env, context, logger=QUIET)
        t3 = time.perf_counter()
        times["validate"].append(t1 - t0)
        times["get_uris"].append(t2 - t1)
        times["modify_context"].append(t3 - t2)
        times["worker start"].append((t1 - t0) + 3 * (t2 - t1) + (t3 - t2))
    return times


def measure_creates(make_env: Any, iterations: int) -> list[float]:
    """`create` on a new plugin object (a new agent) for an installed environment."""
    from ray_pixi.plugin import PixiPlugin

    times = []
    loop = asyncio.new_event_loop()
    try:
        for _ in range(iterations):
            plugin = PixiPlugin()
            runtime_env = make_env()
            plugin.validate(runtime_env)  # builds the implementation (a new agent's first use)
            _join_sweeps()
            uris = plugin.get_uris(runtime_env)
            t0 = time.perf_counter()
            loop.run_until_complete(plugin.create(uris[0], runtime_env, _context(),
                                                  logger=QUIET))
            times.append(time.perf_counter() - t0)
            plugin.modify_context(uris, runtime_env, _context(), logger=QUIET)
    finally:
        loop.close()
    return times


def install(plugin: Any, make_env: Any) -> float:
    """The first setup (installs the environment unless the store has it)."""
    runtime_env = make_env()
    plugin.validate(runtime_env)
    uris = plugin.get_uris(runtime_env)
    started = time.perf_counter()
    asyncio.run(plugin.create(uris[0], runtime_env, _context(), logger=QUIET))
    plugin.modify_context(uris, runtime_env, _context(), logger=QUIET)
    return time.perf_counter() - started


def run(n: Node, iterations: int, creates: int, project_files: int, bulk_packages: int,
        bulk_environments: int) -> tuple[list[Table], dict[str, Any]]:
    from ray.runtime_env import RuntimeEnv

    from ray_pixi import pixi
    from ray_pixi.plugin import PixiPlugin

    project = n.root / "project"
    project.mkdir()
    big = n.root / "big"
    with n.applied():
        log(f"setup cost: a project working_dir with {project_files} extra files (pixi lock)")
        write_project(n, project, project_files)
        log(f"setup cost: a project of {bulk_packages} conda packages in "
            f"{1 + bulk_environments} environments (pixi lock)")
        lock_bytes = write_big_lock_project(n, big, bulk_packages, bulk_environments)
        started = time.perf_counter()
        project_spec = pixi("pixi.toml", include=["mypkg/**"], working_dir=project)
        driver_digest = time.perf_counter() - started
        started = time.perf_counter()
        big_spec = pixi("pixi.toml", include=[], working_dir=big)
        driver_big_digest = time.perf_counter() - started
        lock_mb = lock_bytes / 1e6
        cases: dict[str, dict[str, Any]] = {
            "inline": {"pixi": inline_spec(pyjokes="==0.8.3"), "env_vars": {"A": "1"}},
            f"project, {project_files} files": {
                "working_dir": f"local://{project}", "pixi": project_spec},
            f"large lock ({lock_mb:.1f} MB pixi.lock), project mode": {
                "working_dir": f"local://{big}", "pixi": big_spec},
            "large lock, raw spec {'pixi': 'pixi.toml'} (ray job submit)": {
                "working_dir": f"local://{big}", "pixi": "pixi.toml"},
        }
        table = Table(
            f"Cache-hit setup cost: the plugin's own time per setup, in-process (ms; "
            f"{iterations} URI-cache hits, {creates} creates on a new agent)",
            ["runtime_env", "spec bytes", "install", "validate", "get_uris", "modify_context",
             "per worker start", "p99", "aim < 1 ms", "create, new agent", "p90"])
        raw: dict[str, Any] = {"lock_bytes": lock_bytes, "driver_digest_s": driver_digest,
                               "driver_big_digest_s": driver_big_digest}
        for name, value in cases.items():
            def make_env(value: dict[str, Any] = value) -> Any:
                return RuntimeEnv(**value)

            plugin = PixiPlugin()
            log(f"setup cost: {name}: first setup")
            first = install(plugin, make_env)
            log(f"setup cost: {name}: {iterations} cache hits, {creates} creates")
            hits = measure_hits(plugin, make_env, iterations)
            made = measure_creates(make_env, creates)
            total = hits["worker start"]
            shown = f"{first:.1f} s" if first >= 1 else f"{1000 * first:.1f} ms"
            table.add(name, len(RuntimeEnv(**value).serialize()), shown,
                      *[1000 * median(hits[s]) for s in HIT_STEPS], 1000 * median(total),
                      1000 * percentile(total, 99),
                      "yes" if median(total) < 0.001 else "NO",
                      1000 * median(made), 1000 * percentile(made, 90))
            raw[name] = {"hits": summarize(hits), "create_us": summarize({"create": made}),
                         "first_s": first}
    table.notes += [
        "per worker start = validate + 3 x get_uris + modify_context (medians of each "
        "iteration's sum): what the plugin adds to a worker start once Ray's URI cache has "
        "the environment. Each iteration gets a freshly built RuntimeEnv, as Ray "
        "deserializes one per request (not timed: Ray's cost).",
        "create, new agent: Ray's URI cache misses while the environment is installed (a "
        "new agent after a restart, another node on the same store): `create` on a new "
        "plugin object, which finds the node's pixi (cached per binary), computes the key "
        "(a project: reads and hashes its env-defining files), takes the use lock and loads "
        "the ready marker.",
        "install: the row's first setup: installs its environment (the inline one was "
        "installed by the worker-start benchmark, so it only loads the marker). The "
        "project's files other than its manifest, lock and `include` globs are never read.",
        f"pixi() on the driver hashed the project's env-defining files in "
        f"{driver_digest * 1000:.1f} ms, the large-lock project's in "
        f"{driver_big_digest * 1000:.1f} ms; spec bytes: the runtime_env as Ray serializes it "
        "into every task spec.",
    ]
    return [table], raw
