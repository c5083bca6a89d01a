"""`ray-pixi`: commands for people running Ray clusters with pixi environments.

  ray-pixi doctor                 check this node for what the plugin needs
  ray-pixi envs list|rm|gc        the environments in this node's store
  ray-pixi prefetch               install an environment on every alive node of a cluster
  ray-pixi demo                   run a task inside a pixi environment on a local cluster
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from ray_pixi import settings
from ray_pixi.commands import demo, doctor, envs, prefetch
from ray_pixi.commands.common import CliError

__all__ = ["CliError", "main"]


# The command line is parsed here; each command is a module of `ray_pixi.commands`, whose
# functions' docstrings become the commands' --help.
def _doc(func: Any) -> str:
    return " ".join((func.__doc__ or "").split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pixi", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Errors print one line with the remedy and exit 2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo_p = sub.add_parser("demo", help=_doc(demo.run), description=_doc(demo.run))
    demo_p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local cluster")
    demo_p.set_defaults(func=demo.run)

    doc = sub.add_parser(
        "doctor", help="check this node for what the plugin needs",
        description=_doc(doctor.run) + f" Checks: {settings.PLUGINS} lists "
        f"{settings.PLUGIN_CLASS}; every node setting ({', '.join(settings.NAMES[:-1])}) is "
        "well-formed; the cluster's Python imports Ray and the plugin; pixi is found "
        f"({settings.PIXI_EXE}, then PATH) at a supported version; the store "
        f"({settings.STORE_DIR}) and "
        "pixi's cache (PIXI_CACHE_DIR) are writable and on one filesystem; free disk; Python "
        "and Ray versions. With a Ray node running here, its agent's variables are read from "
        "/proc (from the raylet, which the agent inherits them from); otherwise this shell's, "
        "which `ray start` would pass on.")
    doc.add_argument("--agent-pid", type=int, metavar="PID",
                     help="check the runtime_env agent with this pid, or the one of the raylet "
                          "with this pid (default: the newest Ray node running here)")
    doc.add_argument("--shell", action="store_true",
                     help="check this shell's variables even if an agent is running (before "
                          "`ray start`)")
    doc.add_argument("--python", metavar="PATH",
                     help="the cluster's Python (default: the agent's, else the one `ray` on "
                          "PATH runs)")
    doc.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    doc.set_defaults(func=doctor.run)

    envs_p = sub.add_parser("envs", help="list, remove, garbage-collect or export this node's "
                          "environments", description="The environments in this node's "
                          f"store. The store is --store, else ${settings.STORE_DIR}, else the "
                          "running Ray agent's, else ~/.cache/ray-pixi/store.")
    envs_sub = envs_p.add_subparsers(dest="envs_command", required=True, metavar="ACTION")
    store_help = f"the store directory (default: ${settings.STORE_DIR}, else the running " \
        "agent's)"
    ls = envs_sub.add_parser("list", help="list environments", description=_doc(envs.run_list))
    ls.add_argument("--store", metavar="DIR", help=store_help)
    ls.add_argument("--json", action="store_true", help="print JSON for scripts")
    ls.set_defaults(func=envs.run_list)
    rm = envs_sub.add_parser("rm", help="remove unused environments",
                             description=_doc(envs.run_rm))
    rm.add_argument("keys", nargs="+", metavar="KEY", help="environment key or unique prefix")
    rm.add_argument("--store", metavar="DIR", help=store_help)
    rm.set_defaults(func=envs.run_rm)
    gc = envs_sub.add_parser("gc", help="remove every unused environment",
                             description=_doc(envs.run_gc))
    gc.add_argument("--older-than", type=envs.parse_age, default=0.0, metavar="AGE",
                    help="only environments last used longer ago than AGE (e.g. 30m, 12h, 7d; "
                         "default: any)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed")
    gc.add_argument("--store", metavar="DIR", help=store_help)
    gc.set_defaults(func=envs.run_gc)
    lk = envs_sub.add_parser("lock", help="print the pixi.lock an environment was installed "
                             "from", description=_doc(envs.run_lock))
    lk.add_argument("key", metavar="KEY", help="environment key or unique prefix")
    lk.add_argument("--store", metavar="DIR", help=store_help)
    lk.set_defaults(func=envs.run_lock)

    pre = sub.add_parser(
        "prefetch", help="install an environment on every alive node of a cluster",
        description=textwrap.fill(_doc(prefetch.run) + " The environment is the same one a "
                                  "job with this runtime_env uses, so the job then starts "
                                  "without installing.", 88),
        epilog="examples:\n  ray-pixi prefetch --address 10.0.0.1:6379 --manifest pixi.toml "
        "-e cuda\n  ray-pixi prefetch --pypi 'requests>=2.31' --conda 'numpy>=2'\n"
        "  ray-pixi prefetch --runtime-env-json '{\"working_dir\": \".\", \"pixi\": "
        "\"pixi.toml\"}'", formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("--address", metavar="ADDR",
                     help="the cluster (default: $RAY_ADDRESS, else a cluster on this node)")
    what = pre.add_argument_group(
        "the environment: one of --manifest, inline --pypi/--conda (with --channel), or "
        "--runtime-env-json")
    what.add_argument("--manifest", metavar="PATH",
                      help="pixi.toml or pyproject.toml, inlined with its pixi.lock as "
                           "pixi(PATH) does")
    what.add_argument("--pypi", action="append", default=[], metavar="REQ",
                      help="inline PyPI requirement, e.g. 'requests>=2.31' (repeatable)")
    what.add_argument("--conda", action="append", default=[], metavar="REQ",
                      help="inline conda requirement, e.g. 'numpy>=2' (repeatable)")
    what.add_argument("--channel", action="append", default=[], metavar="NAME",
                      help="conda channel for --conda (repeatable; default conda-forge)")
    what.add_argument("--runtime-env-json", metavar="JSON",
                      help="a whole runtime_env with a 'pixi' field, as `ray job submit` "
                           "takes it (for project mode with a working_dir)")
    pre.add_argument("-e", "--environment", default="default",
                     help="pixi environment (default: default)")
    pre.add_argument("--timeout", type=int, metavar="SECONDS",
                     help="Ray's setup_timeout_seconds per node (default: Ray's, 600)")
    pre.set_defaults(func=prefetch.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # one line with the remedy; tracebacks are for bugs
        from ray_pixi.errors import PixiNotFoundError, PixiSpecError

        if isinstance(e, (CliError, PixiSpecError, PixiNotFoundError, settings.InvalidSetting)):
            print(f"ray-pixi: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
