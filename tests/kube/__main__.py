"""Build or run the cluster-in-a-box by hand.

PYTHONPATH=tests python -m kube build    # build/cached binaries and KubeRay's samples
                                         # (what .ci/setup-kube runs)
PYTHONPATH=tests python -m kube up       # start it with its real node; prints KUBECONFIG;
                                         # Ctrl-C stops it and removes what the node made
PYTHONPATH=tests python -m kube up --no-node   # the API server tier's cluster: no node
PYTHONPATH=tests python -m kube down     # remove what a killed node left behind (bridge,
                                         # nft tables, cgroups, mounts, kernel settings)
PYTHONPATH=tests python -m kube where    # print the cache dir and each binary's state
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

# Only the standard library until `up`: .ci/setup-kube runs `build` with any python3.
from .build import (
    COMPONENTS,
    KUBERAY,
    NODE_COMPONENTS,
    BuildError,
    Unavailable,
    cache_dir,
    ensure_all,
    is_built,
    module_source,
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kube",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["build", "up", "down", "where"])
    parser.add_argument("--no-node", action="store_true", help="up: no kubelet, no Pods run")
    parser.add_argument("--image", action="append", default=[],
                        help="up: a Docker image to import into the node (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)

    if args.command == "where":
        print(f"cache: {cache_dir()}")
        for component in (*COMPONENTS, *NODE_COMPONENTS):
            state = "built" if is_built(component) else "not built"
            print(f"{component.name} {component.version}: {state} ({component.binary()})")
        return 0

    if args.command == "down":
        from .node import NodeLock, teardown

        lock = NodeLock(_log, timeout=5)
        try:
            teardown(None, _log)
        finally:
            lock.close()
        return 0

    try:
        paths = ensure_all(_log, node=args.command == "build" or not args.no_node)
        # KubeRay's sample clusters, which the operator's render test prepares.
        samples = module_source(KUBERAY) / "config" / "samples"
    except (Unavailable, BuildError) as error:
        _log(f"kube: {error}")
        return 2
    if args.command == "build":
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"kuberay samples: {samples}")
        return 0

    from .cluster import Binaries, KubeCluster
    from .node import NodeBinaries

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    binaries = Binaries.from_paths(paths)
    node = None if args.no_node else NodeBinaries.find(paths)
    with KubeCluster(binaries, log=_log, node=node, images=args.image) as cluster:
        print(f"export KUBECONFIG={cluster.admin_kubeconfig}", flush=True)
        _log(f"kube: logs in {cluster.workdir}; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
