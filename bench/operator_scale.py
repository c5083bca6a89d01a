"""The reconciler at scale: one RayCluster with many Pods on the real kube-apiserver + KubeRay.

The chart is installed with real Helm into the cluster-in-a-box (tests/kube) and its two roles
run locally as their ServiceAccounts. KubeRay builds the cluster's Pods (they stay Pending:
there is no kubelet). The reconciler is then made to see every one of them (a migration
makes all pods run "another payload", which its event counts), and RayCluster events are
driven one at a time (each changes what the reconciler reports, so each is observable). The
API server's audit log counts the reconciler's requests from outside its process; /proc gives
its resident memory.

The baseline, measured in the same run: ray-pixi-operator 0.1.0 LISTed the cluster's pods on
every RayCluster event; the size and time of that LIST is measured here as the admin.

    PYTHONPATH=tests .venv/bin/python -m bench.operator_scale --pods 1000
    bench/operator-scale --pods 100 --events 10 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:  # the cluster-in-a-box lives in tests/kube
    sys.path.insert(0, str(REPO / "tests"))

from kube.cluster import KubeCluster  # noqa: E402
from kube.manifests import raycluster  # noqa: E402
from kube.release import install_release, operator_executable  # noqa: E402
from kube.rest import poll  # noqa: E402

IMAGE = "registry.example.com/ml/ray-pixi"
LABELS = {"ray-pixi.io/enabled": "true"}
NAME = "big"


@dataclass
class Scale:
    """What one run measured."""

    pods: int
    events: int
    kuberay_build_seconds: float = 0.0
    rss_kib: dict[str, int] = field(default_factory=dict)  # phase -> reconciler VmRSS
    webhook_rss_kib: int = 0
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
        watched = self.rss_kib["first process, half the pods watched"] - self.rss_kib["no cluster"]
        return watched / (self.pods // 2)

    @property
    def kib_per_pod_after_restart(self) -> float:
        """Memory per pod of a reconciler that listed them at its start (peak included)."""
        return (self.rss_kib["all pods indexed"] - self.rss_kib["no cluster"]) / self.pods


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


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
    workdir: Path,
    *,
    pods: int,
    events: int,
    log: Callable[[str], None] = _log,
    namespace: str = "operator-scale",
) -> Scale:
    """Install the chart, build `pods` Pods of one cluster, drive `events` cluster events.

    Phases: the cluster with half its pods; a new payload and a migration, so the reconciler
    reports those pods as running another payload (it sees every one); the other half built
    (its RayPixiInjected event counts them all): the memory the second half took, in one
    process, is the memory per pod. Then the RayCluster events.
    """
    executable = operator_executable()
    if executable is None:
        raise RuntimeError("no ray-pixi-operator executable (pip install -e operator)")
    scale = Scale(pods=pods, events=events)
    half = pods // 2
    values: dict[str, Any] = {"namespaces": [namespace], "image": {"repository": IMAGE, "tag": "a"}}
    release = install_release(
        cluster, workdir, executable=executable, name="scale", namespace=namespace, values=values
    )
    admin = cluster.rest()
    path = cluster.path_for("ray.io/v1", "RayCluster", namespace, NAME)
    try:
        first = release.reconciler.process
        assert first is not None and first.pid is not None
        scale.rss_kib["no cluster"] = rss_kib(first.pid)

        body = raycluster(NAME, labels=LABELS, workers=half - 1)
        body["spec"]["workerGroupSpecs"][0]["maxReplicas"] = pods
        started = time.monotonic()
        cluster.apply(body, namespace)
        _wait_for_pod_count(cluster, namespace, half, timeout=max(120.0, pods * 0.5))
        log(f"KubeRay built {half} pods in {time.monotonic() - started:.1f} s")
        flips = _Flipper(cluster, namespace, path)
        flips.flip(expect_pods=half)
        scale.rss_kib["first process, half the pods watched"] = rss_kib(first.pid)

        # A new payload, then a migration without Recreate: every pod now runs another payload
        # than its template, and the reconciler's event counts them: it sees all of them.
        values["image"]["tag"] = "b"
        release.upgrade(values)
        reconciler = release.reconciler.process
        assert reconciler is not None and reconciler.pid is not None
        username = release.reconciler.username
        admin.merge_patch(path, {"metadata": {"annotations": {"ray-pixi.io/migrate": "1"}}})
        message = _wait_for_event(cluster, namespace, "RayPixiPodsOnOtherPayload")
        scale.pods_reported = int(message.split(" pod(s)", 1)[0])
        log(f"the reconciler reports {scale.pods_reported} pods on another payload")
        flips.flip(expect_pods=half)
        scale.rss_kib["half the pods indexed"] = rss_kib(reconciler.pid)

        started = time.monotonic()
        admin.json_patch(
            path,
            [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": pods - 1}],
        )
        _wait_for_pod_count(cluster, namespace, pods, timeout=max(120.0, pods * 0.5))
        scale.kuberay_build_seconds = time.monotonic() - started
        log(f"KubeRay built {pods - half} more pods in {scale.kuberay_build_seconds:.1f} s")
        flips.flip(expect_pods=pods)
        scale.rss_kib["all pods indexed"] = rss_kib(reconciler.pid)
        scale.startup_calls, offset = _calls(cluster, username, 0)

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
        scale.event_calls, _ = _calls(cluster, username, offset)
        scale.rss_kib["after the events"] = rss_kib(reconciler.pid)
        webhook = release.webhook.process
        assert webhook is not None and webhook.pid is not None
        scale.webhook_rss_kib = rss_kib(webhook.pid)
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


def _wait_for_pod_count(cluster: KubeCluster, namespace: str, count: int, timeout: float) -> None:
    admin = cluster.rest()

    def built() -> bool:
        listed = admin.get(
            f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"ray.io/cluster={NAME}"
        )
        return len(listed["items"]) >= count

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

    rss = scale.rss_kib
    lines = [
        f"One RayCluster, {scale.pods} Pods (KubeRay v1.6.2 built the second half in "
        f"{scale.kuberay_build_seconds:.0f} s), {scale.events} RayCluster events.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| pods the reconciler reported on another payload (from its index) | "
        f"{scale.pods_reported} |",
        f"| reconciler RSS, no cluster | {rss['no cluster'] / 1024:.1f} MiB |",
        f"| reconciler RSS, {scale.pods // 2} pods watched as KubeRay built them | "
        f"{rss['first process, half the pods watched'] / 1024:.1f} MiB |",
        f"| reconciler RSS after a restart, {scale.pods // 2} pods listed | "
        f"{rss['half the pods indexed'] / 1024:.1f} MiB |",
        f"| reconciler RSS, all {scale.pods} pods indexed | "
        f"{rss['all pods indexed'] / 1024:.1f} MiB |",
        f"| reconciler RSS, after the events | {rss['after the events'] / 1024:.1f} MiB |",
        f"| reconciler memory per pod, watched | {scale.kib_per_pod:.1f} KiB |",
        f"| reconciler memory per pod, {scale.pods} pods after a restart (listing peak "
        f"included) | {scale.kib_per_pod_after_restart:.1f} KiB |",
        f"| webhook RSS (no watches) | {scale.webhook_rss_kib / 1024:.1f} MiB |",
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
        f"(384 MiB) would hold about "
        f"{int((384 * 1024 - rss['no cluster']) / scale.kib_per_pod_after_restart):,} Ray pods "
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

    paths = ensure_all(_log)
    binaries = Binaries.from_paths(paths)
    with (
        tempfile.TemporaryDirectory(prefix="ray-pixi-operator-scale-") as tmp,
        KubeCluster(binaries, log=_log) as cluster,
    ):
        scale = measure(cluster, Path(tmp), pods=args.pods, events=args.events)
    text = table(scale)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator-scale.md").write_text(
        "# The reconciler at scale\n\nWritten by `bench/operator-scale` "
        f"(`--pods {args.pods} --events {args.events}`) on the cluster-in-a-box "
        "(etcd, kube-apiserver v1.36.3, KubeRay v1.6.2; no kubelet, so the Pods stay "
        "Pending). See bench/operator_scale.py for what is measured and how.\n\n" + text + "\n"
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
