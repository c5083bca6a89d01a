"""`ray-pixi`: commands for people running Ray clusters with pixi environments."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]

PLUGINS_VAR = "RAY_RUNTIME_ENV_PLUGINS"
PLUGIN_ENTRY = {"class": "ray_pixi.PixiPlugin"}


def _register_plugin() -> None:
    """Add the plugin to RAY_RUNTIME_ENV_PLUGINS for the local cluster ray.init starts."""
    current = json.loads(os.environ.get(PLUGINS_VAR) or "[]")
    if not any(p.get("class") == PLUGIN_ENTRY["class"] for p in current):
        current.append(PLUGIN_ENTRY)
    os.environ[PLUGINS_VAR] = json.dumps(current)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a local Ray cluster and run a task inside an inline pixi environment."""
    import ray

    from ray_pixi import pixi

    _register_plugin()
    spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
    print(f"runtime_env = {{'pixi': {spec}}}")
    ray.init(num_cpus=args.num_cpus, runtime_env={"pixi": spec}, log_to_driver=False)
    try:
        @ray.remote(max_calls=1)
        def task() -> dict[str, str]:
            import sys
            from importlib.metadata import version

            import pyjokes

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-pixi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local cluster")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # one line with the remedy; tracebacks are for bugs
        from ray_pixi.errors import PixiNotFoundError, PixiSpecError

        if isinstance(e, (PixiSpecError, PixiNotFoundError)):
            print(f"ray-pixi: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
