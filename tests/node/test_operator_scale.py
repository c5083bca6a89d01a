"""The reconciler at scale, small: bench/operator-scale's measurement with 100 Pods, on the
session's node. The chart's Pods run there; the Ray cluster's 100 Pods stay off it (a
nodeSelector that matches no node). The 1,000-Pod figures are in
bench/results/operator-scale.md.

Asserted is behaviour, not speed: the reconciler knows every pod of the cluster (it reports
them) without a single pod LIST while RayCluster events come in, and its requests per event
do not depend on the pod count. The memory figures are printed, never asserted.
"""

from __future__ import annotations

import sys

import pytest

from kube.cluster import KubeCluster
from support import REPO

pytestmark = pytest.mark.node

PODS = 100
EVENTS = 6


def test_the_reconciler_sees_every_pod_without_listing_them_per_event(
    kube_node: KubeCluster, chart_images: list[str]
) -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.operator_scale import measure, table

    scale = measure(kube_node, pods=PODS, events=EVENTS, namespace="operator-scale-ci")
    print("\n" + table(scale))
    assert scale.pods_reported == PODS // 2  # from its index, after a restart that listed them
    assert scale.event_calls.get("list pods", 0) == 0, scale.event_calls
    # Per event: a patch of the cluster's status annotations and its events, nothing per pod.
    assert set(scale.event_calls) <= {"patch rayclusters", "create events"}, scale.event_calls
    assert scale.event_calls["patch rayclusters"] == EVENTS
    assert scale.calls_per_event <= 4, scale.event_calls
    assert scale.pods_scheduled == 0  # the node ran the chart's Pods, none of the Ray cluster's
