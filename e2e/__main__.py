"""`python3 -m e2e`: the end-to-end scenario (e2e/scenario.py) on the cluster of the current
kubeconfig context, as `e2e/run` calls it on kind once KubeRay and the chart run there.

    python3 -m e2e [--namespace ray-pixi-e2e] [--kubeconfig PATH]

Needs python3 with the `kubernetes` client and PyYAML, and kubectl. The manifests' images
are used as they are (kind pulls them from Docker Hub), and conda-forge's `proj` is the
activation package. The head's Jobs API is reached with `kubectl port-forward` to the head's
Service: kind's Service IPs live inside its node container, out of the host's reach, and a
port-forward is how a user outside the cluster reaches a dashboard. It keeps the scenario's
submissions the same HTTP requests on both clusters (the node tier reaches the Service's
ClusterIP directly), where `ray job submit` exec'd in the head would take another path: the
working_dir copied into the Pod first, the Jobs API reached from inside.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from e2e.scenario import DASHBOARD_PORT, Cluster, ScenarioFailure, run

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


def kubectl(kubeconfig: Path | None) -> list[str]:
    return ["kubectl", *([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])]


def port_forward(kubeconfig: Path | None
                 ) -> Callable[[str, str], contextlib.AbstractContextManager[str]]:  # fmt: skip
    """(namespace, RayCluster) -> a context with the local address of its head's Jobs API,
    forwarded by `kubectl port-forward` to the head's Service (`<cluster>-head-svc`)."""

    @contextlib.contextmanager
    def forward(namespace: str, name: str) -> Iterator[str]:
        argv = [*kubectl(kubeconfig), "--namespace", namespace, "port-forward",
                f"service/{name}-head-svc", f":{DASHBOARD_PORT}"]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        assert process.stdout is not None
        try:
            deadline = time.monotonic() + 60
            seen = []
            while time.monotonic() < deadline:
                ready, _, _ = select.select([process.stdout], [], [], 1)
                if not ready:
                    continue
                line = process.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if found := FORWARDING.search(line):
                    # kubectl says "Handling connection" for every request: keep the pipe
                    # drained, or a long step would block it.
                    threading.Thread(target=process.stdout.read, daemon=True).start()
                    yield f"http://127.0.0.1:{found[1]}"
                    return
            raise ScenarioFailure(f"{' '.join(argv)} did not forward: {''.join(seen)}")
        finally:
            process.terminate()
            process.wait(timeout=30)

    return forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="ray-pixi-e2e")
    parser.add_argument("--kubeconfig", type=Path, default=None)
    args = parser.parse_args()
    from kubernetes import client, config

    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(args.kubeconfig) if args.kubeconfig else None)
    core = client.CoreV1Api()
    if not core.list_namespace(field_selector=f"metadata.name={args.namespace}").items:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=args.namespace)))
    cluster = Cluster(kubeconfig=args.kubeconfig, jobs_address=port_forward(args.kubeconfig))
    try:
        run(cluster, args.namespace)
    except ScenarioFailure as failure:
        print(f"e2e: FAIL {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
