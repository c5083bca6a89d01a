"""The reconciler at scale: one RayCluster with many Pods, on the real node of tests/kube.

The chart is installed with real Helm; its webhook and reconciler are the chart's own Pods on
the node, from the add-on's image, with the chart's resources enforced. KubeRay builds the
Ray cluster's Pods, each with a nodeSelector that matches no node: they stay Pending, so
1,000 of them cost the API server and the reconciler what they would, and the node starts
none. The reconciler is made to see every one of them (a migration makes all pods run
"another payload", which its event counts), and RayCluster events are driven one at a time
(each changes what the reconciler reports, so each is observable). The API server's audit log
counts the reconciler's requests from outside its Pod; the kubelet's summary API gives its
memory working set (what `kubectl top` and the memory limit see), from a sample taken after
each phase.

The baseline, measured in the same run: ray-pixi-operator 0.1.0 LISTed the cluster's pods on
every RayCluster event; the size and time of that LIST is measured here as the admin.

    PYTHONPATH=tests .venv/bin/python -m bench.operator_scale --pods 1000
    bench/operator-scale --pods 100 --events 10 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:  # the cluster-in-a-box lives in tests/kube
    sys.path.insert(0, str(REPO / "tests"))

from kubernetes.utils import parse_quantity  # noqa: E402

from kube.cluster import KubeCluster  # noqa: E402
from kube.manifests import raycluster  # noqa: E402
from kube.node import NODE_NAME  # noqa: E402
from kube.release import PodRole, install_release  # noqa: E402
from kube.rest import poll  # noqa: E402
from node.images import CHART_IMAGE, CHART_TAGS  # noqa: E402

LABELS = {"ray-pixi.io/enabled": "true"}
NAME = "big"
# KubeRay's Pods of the measured cluster wait for a node that never comes.
OFF_NODE = {"ray-pixi.io/bench": "no-such-node"}


@dataclass
class Scale:
    """What one run measured."""

    pods: int
    events: int
    kuberay_build_seconds: float = 0.0
    memory_kib: dict[str, int] = field(default_factory=dict)  # phase -> reconciler working set
    webhook_memory_kib: int = 0
    pods_scheduled: int = 0  # of the Ray cluster's Pods: none, else the node ran them
    memory_limit_kib: int = 0  # the reconciler container's, as the chart sets it
    startup_calls: dict[str, int] = field(default_factory=dict)  # "verb resource" -> count
    event_calls: dict[str, int] = field(default_factory=dict)
    event_seconds: list[float] = field(default_factory=list)
    baseline_list_bytes: int = 0
    baseline_list_seconds: list[float] = field(default_factory=list)
    pods_reported: int = 0

    @property
    def calls_per_event(self) -> float:
        return sum(self.event_calls.values()) / self.events

    @property
    def pod_lists_per_event(self) -> float:
        return self.event_calls.get("list pods", 0) / self.events

    @property
    def kib_per_pod(self) -> float:
        """Memory per pod of a reconciler that watched the pods being created."""
        watched = (
            self.memory_kib["first process, half the pods watched"] - self.memory_kib["no cluster"]
        )
        return watched / (self.pods // 2)

    @property
    def kib_per_pod_after_restart(self) -> float:
        """Memory per pod of a reconciler that listed them at its start (peak included)."""
        return (self.memory_kib["all pods indexed"] - self.memory_kib["no cluster"]) / self.pods


def working_set_kib(cluster: KubeCluster, role: PodRole, *, after: float) -> int:
    """The memory working set of the role's Pod (its largest, for a role with replicas), as
    the kubelet's summary API reports it, from samples taken after `after` (a
    `time.time()`): cAdvisor samples every 10-15 s, and an older sample would measure the
    phase before."""
    names = {
        p["metadata"]["name"] for p in role.pods() if not p["metadata"].get("deletionTimestamp")
    }
    container = role.container["name"]

    def sampled() -> int | None:
        summary = cluster.rest().get(f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary")
        fresh: dict[str, int] = {}
        for entry in summary.get("pods", []):
            if entry["podRef"]["name"] not in names:
                continue
            for stats in entry.get("containers", []):
                memory = stats.get("memory") or {}
                if stats["name"] == container and "workingSetBytes" in memory:
                    taken = datetime.datetime.fromisoformat(memory["time"].replace("Z", "+00:00"))
                    if taken.timestamp() > after:
                        fresh[entry["podRef"]["name"]] = int(memory["workingSetBytes"]) // 1024
        return max(fresh.values()) if names and set(fresh) == names else None

    return int(poll(sampled, timeout=90, what=f"memory samples of {sorted(names)} after the phase"))


def _calls(cluster: KubeCluster, username: str, since: int) -> tuple[dict[str, int], int]:
    events, offset = cluster.audit_events(username, since)
    counts = collections.Counter(
        f"{e['verb']} {e.get('objectRef', {}).get('resource', '(discovery)')}" for e in events
    )
    return dict(sorted(counts.items())), offset


def _log(message: str) -> None:
    print(f"[operator-scale] {message}", file=sys.stderr, flush=True)


def measure(
    cluster: KubeCluster,
    *,
    pods: int,
    events: int,
    log: Callable[[str], None] = _log,
    namespace: str = "operator-scale",
) -> Scale:
    """Install the chart, build `pods` Pods of one cluster, drive `events` cluster events.

    Phases: the cluster with half its pods; a new payload (the chart upgraded to the image's
    other tag: a new reconciler Pod, which lists the pods at its start) and a migration, so
    the reconciler reports those pods as running another payload (it sees every one); the
    other half built (its RayPixiInjected event counts them all): the memory the second half
    took, in one process, is the memory per pod. Then the RayCluster events.
    """
    scale = Scale(pods=pods, events=events)
    half = pods // 2
    values: dict[str, Any] = {
        "namespaces": [namespace],
        # The add-on's image under two tags (tests/node's chart images): the upgrade from one
        # to the other is the new payload that makes every pod "another payload".
        "image": {"repository": CHART_IMAGE, "tag": CHART_TAGS[0], "pullPolicy": "IfNotPresent"},
    }
    release = install_release(cluster, name="scale", namespace=namespace, values=values)
    admin = cluster.rest()
    path = cluster.path_for("ray.io/v1", "RayCluster", namespace, NAME)
    reconciler = release.reconciler
    try:
        limit = reconciler.container["resources"]["limits"]["memory"]
        scale.memory_limit_kib = int(parse_quantity(limit)) // 1024
        scale.memory_kib["no cluster"] = working_set_kib(cluster, reconciler, after=time.time())

        body = raycluster(NAME, labels=LABELS, workers=half - 1)
        body["spec"]["workerGroupSpecs"][0]["maxReplicas"] = pods
        for group in (body["spec"]["headGroupSpec"], *body["spec"]["workerGroupSpecs"]):
            group["template"]["spec"]["nodeSelector"] = dict(OFF_NODE)
        started = time.monotonic()
        cluster.apply(body, namespace)
        _wait_for_pod_count(cluster, namespace, half, timeout=max(120.0, pods * 0.5))
        log(f"KubeRay built {half} pods in {time.monotonic() - started:.1f} s")
        flips = _Flipper(cluster, namespace, path)
        flips.flip(expect_pods=half)
        scale.memory_kib["first process, half the pods watched"] = working_set_kib(
            cluster, reconciler, after=time.time()
        )

        # A new payload, then a migration without Recreate: every pod now runs another payload
        # than its template, and the reconciler's event counts them: it sees all of them.
        values["image"]["tag"] = CHART_TAGS[1]
        release.upgrade(values)
        admin.merge_patch(path, {"metadata": {"annotations": {"ray-pixi.io/migrate": "1"}}})
        message = _wait_for_event(cluster, namespace, "RayPixiPodsOnOtherPayload")
        scale.pods_reported = int(message.split(" pod(s)", 1)[0])
        log(f"the reconciler reports {scale.pods_reported} pods on another payload")
        flips.flip(expect_pods=half)
        scale.memory_kib["half the pods indexed"] = working_set_kib(
            cluster, reconciler, after=time.time()
        )

        started = time.monotonic()
        admin.json_patch(
            path,
            [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": pods - 1}],
        )
        _wait_for_pod_count(cluster, namespace, pods, timeout=max(120.0, pods * 0.5))
        scale.kuberay_build_seconds = time.monotonic() - started
        log(f"KubeRay built {pods - half} more pods in {scale.kuberay_build_seconds:.1f} s")
        flips.flip(expect_pods=pods)
        scale.memory_kib["all pods indexed"] = working_set_kib(
            cluster, reconciler, after=time.time()
        )
        scale.startup_calls, offset = _calls(cluster, reconciler.username, 0)

        # RayCluster events, one at a time: each flips a per-cluster pixi version, which
        # changes what the reconciler reports (a pinned payload, or not), so it patches the
        # cluster's status annotations and posts events: observable, and real work.
        reports = len(_events_of(cluster, namespace, "RayPixiInjected"))
        for _ in range(events):
            begun = time.monotonic()
            flips.flip(expect_pods=pods)
            scale.event_seconds.append(time.monotonic() - begun)
            # The baseline: the pod LIST ray-pixi-operator 0.1.0 made on every such event.
            begun = time.monotonic()
            raw = admin.request_raw(
                "GET",
                f"/api/v1/namespaces/{namespace}/pods",
                params={"labelSelector": f"ray.io/cluster={NAME}"},
            )
            scale.baseline_list_seconds.append(time.monotonic() - begun)
            scale.baseline_list_bytes = len(raw)
        # kopf posts events from a queue, after the patch: wait for the last report's.
        poll(
            lambda: len(_events_of(cluster, namespace, "RayPixiInjected")) >= reports + events,
            timeout=60,
            what="the reconciler's events for every report",
        )
        scale.event_calls, _ = _calls(cluster, reconciler.username, offset)
        scale.memory_kib["after the events"] = working_set_kib(
            cluster, reconciler, after=time.time()
        )
        scale.webhook_memory_kib = working_set_kib(cluster, release.webhook, after=time.time())
        scale.pods_scheduled = sum(
            1 for pod in _pods(cluster, namespace) if pod["spec"].get("nodeName")
        )
    finally:
        release.uninstall()
    return scale


class _Flipper:
    """One RayCluster event the reconciler visibly reacts to: a per-cluster pixi version set or
    removed. The cluster keeps its recorded payload, so whether that payload differs from the
    settings now changes, and with it what the reconciler reports: it patches the cluster's
    ``ray-pixi.io/reported`` and posts a RayPixiInjected event that counts the pods it knows."""

    def __init__(self, cluster: KubeCluster, namespace: str, path: str) -> None:
        self.cluster, self.namespace, self.path = cluster, namespace, path
        self.version: str | None = None

    def flip(self, *, expect_pods: int) -> None:
        before = _reported(self.cluster, self.namespace)
        seen = {
            e["metadata"]["uid"]
            for e in _events_of(self.cluster, self.namespace, "RayPixiInjected")
        }
        self.version = None if self.version else "0.77.0"
        self.cluster.rest().merge_patch(
            self.path, {"metadata": {"annotations": {"ray-pixi.io/pixi-version": self.version}}}
        )

        def reacted() -> bool:
            if _reported(self.cluster, self.namespace) == before:
                return False
            return any(
                f"({expect_pods} now)" in event["message"]
                for event in _events_of(self.cluster, self.namespace, "RayPixiInjected")
                if event["metadata"]["uid"] not in seen
            )

        poll(
            reacted,
            timeout=60,
            what=f"the reconciler to report {expect_pods} pods after the event",
            describe=lambda: str(_reported(self.cluster, self.namespace)),
        )


def _events_of(cluster: KubeCluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = cluster.rest().get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == NAME]


def _pods(cluster: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    listed = cluster.rest().get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"ray.io/cluster={NAME}"
    )
    return list(listed["items"])


def _wait_for_pod_count(cluster: KubeCluster, namespace: str, count: int, timeout: float) -> None:
    def built() -> bool:
        return len(_pods(cluster, namespace)) >= count

    poll(built, timeout=timeout, what=f"KubeRay to build {count} pods", interval=1.0)


def _wait_for_event(cluster: KubeCluster, namespace: str, reason: str) -> str:
    admin = cluster.rest()

    def found() -> str | None:
        items = admin.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        messages = [e["message"] for e in items if e["reason"] == reason]
        return messages[-1] if messages else None

    return str(poll(found, timeout=120, what=f"a {reason} event"))


def _reported(cluster: KubeCluster, namespace: str) -> str | None:
    body = cluster.rest().get(cluster.path_for("ray.io/v1", "RayCluster", namespace, NAME))
    return (body["metadata"].get("annotations") or {}).get("ray-pixi.io/reported")


# --- the report ------------------------------------------------------------------------------


def table(scale: Scale) -> str:
    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else 0.0

    rss = scale.memory_kib
    lines = [
        f"One RayCluster, {scale.pods} Pods (KubeRay v1.6.2 built the second half in "
        f"{scale.kuberay_build_seconds:.0f} s), {scale.events} RayCluster events.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| pods the reconciler reported on another payload (from its index) | "
        f"{scale.pods_reported} |",
        f"| reconciler working set, no cluster | {rss['no cluster'] / 1024:.1f} MiB |",
        f"| reconciler working set, {scale.pods // 2} pods watched as KubeRay built them | "
        f"{rss['first process, half the pods watched'] / 1024:.1f} MiB |",
        f"| reconciler working set after a restart, {scale.pods // 2} pods listed | "
        f"{rss['half the pods indexed'] / 1024:.1f} MiB |",
        f"| reconciler working set, all {scale.pods} pods indexed | "
        f"{rss['all pods indexed'] / 1024:.1f} MiB |",
        f"| reconciler working set, after the events | {rss['after the events'] / 1024:.1f} MiB |",
        f"| reconciler memory per pod, watched | {scale.kib_per_pod:.1f} KiB |",
        f"| reconciler memory per pod, {scale.pods} pods after a restart (listing peak "
        f"included) | {scale.kib_per_pod_after_restart:.1f} KiB |",
        f"| Ray Pods the node ran (their nodeSelector matches no node) | {scale.pods_scheduled} |",
        f"| webhook working set (no watches; the largest replica) | "
        f"{scale.webhook_memory_kib / 1024:.1f} MiB |",
        f"| reconciler API calls per RayCluster event | {scale.calls_per_event:.2f} |",
        f"| of which pod LISTs | {scale.pod_lists_per_event:.2f} |",
        f"| reconciler reaction per event, median | {median(scale.event_seconds) * 1000:.0f} ms |",
        f"| baseline (0.1.0): one pod LIST per event, size | "
        f"{scale.baseline_list_bytes / 1024 / 1024:.2f} MiB |",
        f"| baseline (0.1.0): that LIST's time, median | "
        f"{median(scale.baseline_list_seconds) * 1000:.0f} ms |",
        "",
        f"At {scale.kib_per_pod_after_restart:.0f} KiB per pod (a restart's listing included) "
        f"over {rss['no cluster'] / 1024:.0f} MiB, the chart's default reconciler memory limit "
        f"({scale.memory_limit_kib / 1024:.0f} MiB) would hold about "
        f"{int((scale.memory_limit_kib - rss['no cluster']) / scale.kib_per_pod_after_restart):,}"
        " Ray pods "
        f"(a linear extrapolation: measured up to {scale.pods}); raise reconciler.resources "
        "for more. Per RayCluster event the reconciler sends a "
        "patch of the cluster's status annotations and its events, however many pods the "
        "cluster has; ray-pixi-operator 0.1.0 sent a LIST of all of them.",
        "",
        "Reconciler requests during the events (audit log, by verb and resource): "
        + (", ".join(f"{k}: {v}" for k, v in scale.event_calls.items()) or "none"),
        "",
        "Reconciler requests from its first start until all pods were indexed (two starts, "
        "each with its initial LIST, in pages, and WATCH of pods and clusters; the migration; "
        "the scale-up): " + ", ".join(f"{k}: {v}" for k, v in scale.startup_calls.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/operator-scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--pods", type=int, default=1000, help="Pods of the one cluster (default 1000)"
    )
    parser.add_argument("--events", type=int, default=20, help="RayCluster events (default 20)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where operator-scale.md and operator-scale.json go",
    )
    args = parser.parse_args(argv)

    from kube.build import ensure_all
    from kube.cluster import Binaries
    from kube.node import NodeBinaries
    from node.images import ensure_operator_image, tag_chart_images

    paths = ensure_all(_log, node=True)
    images = tag_chart_images(ensure_operator_image(_log))
    with KubeCluster(
        Binaries.from_paths(paths), log=_log, node=NodeBinaries.find(paths), images=images
    ) as cluster:
        scale = measure(cluster, pods=args.pods, events=args.events)
    text = table(scale)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator-scale.md").write_text(
        "# The reconciler at scale\n\nWritten by `bench/operator-scale` "
        f"(`--pods {args.pods} --events {args.events}`) on the cluster-in-a-box "
        "with its real node (etcd, kube-apiserver, kubelet v1.36.3, KubeRay v1.6.2): the "
        "chart's Pods run on the node, the Ray Pods stay Pending (a nodeSelector that matches "
        "no node). See bench/operator_scale.py for what is measured and how.\n\n" + text + "\n"
    )
    (args.out / "operator-scale.json").write_text(
        json.dumps(
            {
                **asdict(scale),
                "calls_per_event": scale.calls_per_event,
                "kib_per_pod": scale.kib_per_pod,
                "kib_per_pod_after_restart": scale.kib_per_pod_after_restart,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
