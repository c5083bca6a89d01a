"""`ray-pixi demo`: the shortest proof that the plugin works here. It starts a local Ray
cluster with the plugin registered and runs a task inside an inline pixi environment."""

from __future__ import annotations

import argparse
import json
import os
import time

from ray_pixi import settings

__all__ = ["run"]


def _register_plugin() -> None:
    """Add the plugin to Ray's plugin list (settings.PLUGINS) for the local cluster ray.init
    starts."""
    current = settings.plugins(os.environ) or []
    if not any(p["class"] == settings.PLUGIN_CLASS for p in current):
        current.append({"class": settings.PLUGIN_CLASS})
    os.environ[settings.PLUGINS] = json.dumps(current)


def run(args: argparse.Namespace) -> int:
    """Start a local Ray cluster and run a task inside an inline pixi environment."""
    import ray

    from ray_pixi import pixi

    _register_plugin()
    spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
    print(f"runtime_env = {{'pixi': {spec}}}")
    # A cluster of its own, never one already running here (a bare ray.init() joins that).
    ray.init(address="local", num_cpus=args.num_cpus, runtime_env={"pixi": spec},
             log_to_driver=False)
    try:
        @ray.remote(max_calls=1)
        def task() -> dict[str, str]:
            import sys
            from importlib.metadata import version

            import pyjokes  # type: ignore[import-not-found]  # in the pixi env only

            return {"python": sys.executable, "pyjokes": version("pyjokes"),
                    "joke": pyjokes.get_joke()}

        for attempt in ("first task (installs the environment)", "second task (cached)"):
            started = time.monotonic()
            seen = ray.get(task.remote())
            print(f"{attempt}: {time.monotonic() - started:.1f}s")
        print(f"worker python: {seen['python']}")
        print(f"worker imported pyjokes {seen['pyjokes']}: {seen['joke']}")
    finally:
        ray.shutdown()
    return 0

