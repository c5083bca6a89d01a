"""Build or run the cluster-in-a-box by hand.

PYTHONPATH=tests python -m kube build    # build/cached binaries and KubeRay's samples
                                         # (what .ci/setup-kube runs)
PYTHONPATH=tests python -m kube up       # start it; prints KUBECONFIG; Ctrl-C stops it
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
    ETCD,
    KUBERAY,
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
    parser.add_argument("command", choices=["build", "up", "where"])
    args = parser.parse_args(argv)

    if args.command == "where":
        print(f"cache: {cache_dir()}")
        for component in COMPONENTS:
            state = "built" if is_built(component) else "not built"
            print(f"{component.name} {component.version}: {state} ({component.binary()})")
        return 0

    try:
        paths = ensure_all(_log)
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

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    binaries = Binaries(paths[ETCD.name], paths["kube-apiserver"], paths["kuberay-operator"])
    with KubeCluster(binaries, log=_log) as cluster:
        print(f"export KUBECONFIG={cluster.admin_kubeconfig}", flush=True)
        _log(f"kube: logs in {cluster.workdir}; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
