"""Concurrency: many setups of one new environment in one agent, and two agents (separate
processes, like two Ray nodes on one host) sharing a store: how many installs, how long.
Disk accounting: what the plugin reports to Ray's URI cache against what is on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    Node,
    Table,
    du_bytes,
    du_bytes_counting_links,
    inline_spec,
    log,
    mib,
)

QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.WARNING)
BASELINE = {"six": "==1.16.0"}
ONE_AGENT = {"six": "==1.15.0"}
TWO_AGENTS = {"six": "==1.14.0"}
INSTALLED_LINE = "[ray-pixi: installed "


def installs(store: Path) -> int:
    """Completed installs into `store`: install logs ending with the plugin's line."""
    logs = store / "logs"
    if not logs.is_dir():
        return 0
    return sum(INSTALLED_LINE in p.read_text(errors="replace")
               for p in logs.glob("install-*.log"))


async def setups(plugin: Any, spec: dict[str, Any], count: int) -> list[float]:
    """`count` setups of distinct runtime_envs sharing one pixi URI, concurrently, as the
    agent runs them: validate, get_uris, create, modify_context. Returns the sizes booked."""
    from ray._private.runtime_env.context import RuntimeEnvContext
    from ray.runtime_env import RuntimeEnv

    async def one(i: int) -> float:
        runtime_env = RuntimeEnv(pixi=spec, env_vars={"SETUP": str(i)})
        plugin.validate(runtime_env)
        uris = plugin.get_uris(runtime_env)
        context = RuntimeEnvContext()
        size = await plugin.create(uris[0], runtime_env, context, logger=QUIET)
        plugin.modify_context(uris, runtime_env, context, logger=QUIET)
        return float(size)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def agent_main(count: int, spec_json: str) -> None:
    """One agent process: build the plugin, say ready, wait for go, run the setups."""
    from ray_pixi.plugin import PixiPlugin

    plugin = PixiPlugin()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    sizes = asyncio.run(setups(plugin, json.loads(spec_json), count))
    print(json.dumps({"wall": time.perf_counter() - started, "booked": sum(sizes)}),
          flush=True)
    sys.stdin.readline()  # hold the env (and its use lock) until the parent is done


def run(n: Node, count: int) -> tuple[list[Table], dict[str, Any]]:
    from ray_pixi.plugin import PixiPlugin

    table = Table("Concurrent setups of one new environment",
                  ["scenario", "setups", "installs", "wall (s)", "vs 1 setup"])
    raw: dict[str, Any] = {}
    with n.applied():
        plugin = PixiPlugin()
        baseline = None
        for name, pypi, k in (("1 setup (baseline)", BASELINE, 1),
                              (f"{count} concurrent setups, one agent", ONE_AGENT, count)):
            before = installs(n.store)
            log(f"concurrency: {name}")
            started = time.perf_counter()
            asyncio.run(setups(plugin, inline_spec(**pypi), k))
            wall = time.perf_counter() - started
            baseline = baseline or wall
            table.add(name, k, installs(n.store) - before, round(wall, 2),
                      f"{wall / baseline:.2f}x")
            raw[name] = wall

        half = count // 2
        name = f"2 agents x {half} concurrent setups, one store"
        log(f"concurrency: {name}")
        before = installs(n.store)
        children = [subprocess.Popen(
            [sys.executable, "-m", "bench.concurrency", "agent", str(half),
             json.dumps(inline_spec(**TWO_AGENTS))],
            cwd=REPO, env=dict(os.environ), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) for _ in range(2)]
        try:
            for child in children:
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            started = time.perf_counter()
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            reports = [json.loads(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
            wall = time.perf_counter() - started
        finally:
            for child in children:
                if child.stdin:
                    child.stdin.close()
                child.wait(timeout=300)
        table.add(name, 2 * half, installs(n.store) - before, round(wall, 2),
                  f"{wall / baseline:.2f}x")
        raw[name] = {"wall": wall, "agents": reports}
        table.notes.append(
            "installs: completed installs into the store (install logs ending with the "
            "plugin's `[ray-pixi: installed ...]` line). Each environment is new to the "
            "store (inline specs: six from PyPI plus ray[default]); its packages are in the "
            "benchmark's pixi cache. One setup per environment installs; the others wait on "
            "the store's lock (across processes) or on the agent's own per-URI lock.")
    return [table], raw


def disk(n: Node) -> Table:
    """Ray's own URICache and create_for_plugin_if_needed, fed by the plugin: four
    runtime_envs per environment (differing only in env_vars) set up concurrently, for
    three environments that share most packages through the package cache."""
    from ray._private.runtime_env.context import RuntimeEnvContext
    from ray._private.runtime_env.plugin import create_for_plugin_if_needed
    from ray._private.runtime_env.uri_cache import URICache
    from ray.runtime_env import RuntimeEnv

    from ray_pixi.plugin import PixiPlugin
    from ray_pixi.store import Store, directory_size

    log("disk: booking 3 environments x 4 runtime_envs through Ray's URI cache")
    plugin = PixiPlugin()  # a new agent: the environments are installed, it loads them
    cache = URICache(delete_fn=plugin.delete_uri, max_total_size_bytes=10 * 2**30)
    envs = (BASELINE, ONE_AGENT, TWO_AGENTS)

    async def book() -> list[str]:
        await asyncio.gather(*(
            create_for_plugin_if_needed(
                RuntimeEnv(pixi=inline_spec(**pypi), env_vars={"I": str(i)}), plugin, cache,
                RuntimeEnvContext(), logger=QUIET)
            for pypi in envs for i in range(4)))
        impl = plugin._impl()
        return [await impl.key_for(RuntimeEnv(pixi=inline_spec(**pypi))) for pypi in envs]

    with n.applied():
        keys = asyncio.run(book())
    store = Store(n.store)
    entries = [e for e in store.entries() if e.key in keys]
    workspaces = [store.workspace(k) for k in keys]
    table = Table("Disk accounting: 3 environments, 4 runtime_envs each (12 setups)",
                  ["measure", "bytes", "size"])
    rows = [
        ("reported to Ray's URI cache (URICache total)", cache.get_total_size_bytes()),
        ("sum of the store entries' own sizes (ready markers)",
         sum(e.size_bytes for e in entries)),
        ("sum of directory_size() per environment, now",
         sum(directory_size(w) for w in workspaces)),
        ("du of all 3 environments together (hard links counted once)",
         du_bytes(*workspaces)),
        ("du -l of all 3 (every hard link counted as a copy)",
         du_bytes_counting_links(*workspaces)),
        ("du of the package cache", du_bytes(n.cache)),
        ("du of the 3 environments + the package cache together",
         du_bytes(*workspaces, n.cache)),
    ]
    for label, value in rows:
        table.add(label, value, mib(value))
    table.notes += [
        f"{len(entries)} environments in the store; Ray books each URI once however many "
        "runtime_envs share it (the plugin returns the size for the first setup only).",
        "An environment's files are hard links into pixi's package cache (conda packages by "
        "pixi, PyPI wheels by its uv; the bytecode ray-pixi compiles is linked back into the "
        "cache too), so what one more environment really adds is the gap between du of the "
        "environments + cache and du of the cache alone; directory_size() counts only what "
        "deleting the environment frees.",
    ]
    return table


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        agent_main(int(sys.argv[2]), sys.argv[3])
