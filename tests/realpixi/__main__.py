"""`PYTHONPATH=tests python -m realpixi build|measure|env`

- build: build (or reuse) the test channel in the user cache and say where it is (CI runs
  this in .ci/setup-realpixi, so the channel's cold build is timed on its own).
- measure: cold and warm channel builds (the cold one in a fresh cache), the python
  package's size, and a cold (empty pixi cache) and a warm `pixi install` of the standard
  manifest, each in a fresh workspace; prints the commands it timed.
- env ROOT: start the offline world, print its env as `export` lines, and serve until
  interrupted (to try pixi by hand against it).
- run ROOT -- CMD...: run CMD in the offline world (`.ci/demo` on machines without pixi
  and without conda-forge, such as this project's build machines).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .channel import Channel
from .find import find_pixi
from .manifest import write_manifest
from .run import run_pixi
from .world import open_world, session_channel


def build() -> int:
    pixi = find_pixi()
    channel = session_channel()
    state = f"built {len(channel.built)} package(s)" if channel.built else "cached"
    print(f"realpixi: {pixi.describe()}")
    print(f"realpixi: channel {channel.path} ({state}, {channel.seconds:.1f}s): "
          + ", ".join(f"{p.name} {p.version}" for p in channel.packages))
    return 0


def _timed_install(world_env: dict[str, str], workspace: Path, channel: Channel) -> float:
    manifest = write_manifest(workspace, channel)
    args = ["install", "--manifest-path", str(manifest)]
    started = time.monotonic()
    result = run_pixi(args, world_env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"pixi {' '.join(args)} failed:\n{result.stderr}")
    print(f"    $ {shlex.quote(world_env['RAY_PIXI_EXE'])} {shlex.join(args)}  "
          f"(PIXI_CACHE_DIR={world_env['PIXI_CACHE_DIR']})")
    return seconds


def measure() -> int:
    with tempfile.TemporaryDirectory(prefix="realpixi-measure-") as tmp:
        root = Path(tmp)
        cold = session_channel(root / "channel-cache")
        warm = session_channel(root / "channel-cache")
        python = cold.package("python")
        size = (cold.path / python.subdir / python.filename).stat().st_size
        print(f"channel build, cold (fresh cache):  {cold.seconds:.1f}s "
              f"(built {len(cold.built)} packages)")
        print(f"channel build, warm (same inputs):  {warm.seconds:.2f}s "
              f"(built {len(warm.built)})")
        print(f"python package: {python.filename}, {size / 2**20:.1f} MiB")
        with open_world(root / "world", pixi_cache=root / "pixi-cache",
                        channel_cache=root / "channel-cache") as world:
            print("pixi install, cold (empty pixi cache, PyPI wheel downloaded):")
            first = _timed_install(world.env, root / "ws-cold", world.channel)
            print(f"    {first:.1f}s")
            print("pixi install, warm (package cache warm, new workspace):")
            second = _timed_install(world.env, root / "ws-warm", world.channel)
            print(f"    {second:.1f}s")
            refused = world.proxy.refused
            print(f"hosts asked through the proxy: "
                  f"{sorted({a.target for a in world.proxy.attempts})}; refused: {refused}")
    return 0


def serve(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    with open_world(root) as world:
        for name, value in world.env.items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# channel: {world.channel.path}; mirror: {world.mirror.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def run(root: Path, command: list[str]) -> int:
    """`command` with the offline world's env, while its mirror and proxy serve."""
    import os
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    with open_world(root) as world:
        print(f"realpixi: {world.pixi.describe()}; conda-forge is the local channel "
              f"{world.channel.path} served on loopback; PyPI through a recorder that lets "
              "only pypi.org and files.pythonhosted.org out", flush=True)
        done = subprocess.run(command, env={**os.environ, **world.env}, check=False)
        refused = sorted({a.target for a in world.proxy.refused})
        if refused:
            print(f"realpixi: requests for hosts other than PyPI were refused: {refused}")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realpixi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    sub.add_parser("measure")
    env = sub.add_parser("env")
    env.add_argument("root", type=Path)
    runner = sub.add_parser("run", help="run a command in the offline world")
    runner.add_argument("root", type=Path)
    runner.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "build":
        return build()
    if args.command == "measure":
        return measure()
    if args.command == "run":
        return run(args.root, [c for c in args.cmd if c != "--"] or ["true"])
    return serve(args.root)


if __name__ == "__main__":
    sys.exit(main())
