"""What the reconciler reports for an opted-in RayCluster, given the stored object and its pods."""

from __future__ import annotations

import copy
from typing import Any

from ray_pixi_operator import prepare
from ray_pixi_operator.status import build_cluster_status, needs_report


def pod_from(
    cluster: dict[str, Any], template: dict[str, Any], name: str, group: str | None
) -> dict[str, Any]:
    """A pod as KubeRay builds it: the template's metadata plus KubeRay's labels."""
    metadata = copy.deepcopy(template.get("metadata") or {})
    metadata["name"] = name
    metadata["labels"] = {
        **metadata.get("labels", {}),
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/node-type": "head" if group is None else "worker",
        "ray.io/group": "headgroup" if group is None else group,
    }
    return {"metadata": metadata, "spec": copy.deepcopy(template["spec"])}


def pods_of(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    pods = [
        pod_from(
            cluster, spec["headGroupSpec"]["template"], f"{cluster['metadata']['name']}-head", None
        )
    ]
    for group in spec.get("workerGroupSpecs", []):
        pods.append(
            pod_from(
                cluster,
                group["template"],
                f"{cluster['metadata']['name']}-{group['groupName']}-worker-a",
                group["groupName"],
            )
        )
    return pods


def test_labelled_cluster_that_was_not_injected_is_a_warning(manifest, settings):
    cluster = manifest("raycluster-workers")
    status = build_cluster_status(cluster, pods_of(cluster), settings)
    assert (status.status, status.type, status.reason) == (
        "not-injected",
        "Warning",
        "RayPixiNotInjected",
    )
    assert "webhook was unreachable" in status.message


def test_injected_cluster_with_pods_built_from_it_is_injected(manifest, settings):
    cluster = prepare(manifest("raycluster-workers"), settings).body
    status = build_cluster_status(cluster, pods_of(cluster), settings)
    assert (status.status, status.type, status.reason) == ("injected", "Normal", "RayPixiInjected")


def test_injected_cluster_without_pods_yet_is_injected(manifest, settings):
    cluster = prepare(manifest("raycluster-head-only"), settings).body
    assert build_cluster_status(cluster, [], settings).status == "injected"


def test_pods_from_before_the_injection_are_named(manifest, settings):
    before = manifest("raycluster-workers")
    old_pods = pods_of(before)  # built while the cluster was not injected
    cluster = prepare(before, settings).body  # injected later, on an UPDATE
    new_pods = pods_of(cluster)
    pods = [old_pods[0], new_pods[1], old_pods[2]]
    status = build_cluster_status(cluster, pods, settings)
    assert (status.status, status.type) == ("pods-predate-injection", "Warning")
    assert "2 pod(s)" in status.message
    assert "training-head" in status.message and "training-gpu-worker-a" in status.message
    assert "training-cpu-worker-a" not in status.message
    assert "Delete them" in status.message


def test_pods_of_an_older_injection_predate_the_current_one(manifest, make_settings):
    first = prepare(manifest("raycluster-head-only"), make_settings()).body
    old_pods = pods_of(first)
    cluster = prepare(first, make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")).body
    assert build_cluster_status(
        cluster, old_pods, make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    ).status == ("pods-predate-injection")


def test_terminating_pods_are_ignored(manifest, settings):
    before = manifest("raycluster-head-only")
    old_head = pods_of(before)[0]
    old_head["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cluster = prepare(before, settings).body
    assert (
        build_cluster_status(cluster, [old_head, *pods_of(cluster)], settings).status == "injected"
    )


def test_bad_annotation_on_a_stored_cluster_is_reported_as_invalid(manifest, settings):
    cluster = prepare(manifest("raycluster-head-only"), settings).body
    cluster["metadata"]["annotations"] = {"ray-pixi.io/cache-volume": "nfs"}
    status = build_cluster_status(cluster, [], settings)
    assert (status.status, status.type, status.reason) == ("invalid", "Warning", "RayPixiInvalid")
    assert "ray-pixi.io/cache-volume" in status.message and "'nfs'" in status.message


def test_kept_user_values_are_reported_with_the_injected_status(manifest, settings):
    cluster = manifest("raycluster-head-only")
    ray = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["env"] = [{"name": "PIXI_CACHE_DIR", "value": "/mnt/cache"}]
    cluster = prepare(cluster, settings).body
    status = build_cluster_status(cluster, [], settings)
    assert status.status == "injected"
    assert "env[PIXI_CACHE_DIR] keeps the user's '/mnt/cache'" in status.message


def test_a_status_is_reported_once_per_change(manifest, settings):
    cluster = manifest("raycluster-head-only")
    missing = build_cluster_status(cluster, [], settings)
    injected = build_cluster_status(prepare(cluster, settings).body, [], settings)
    # A fresh operator reports what differs from the stored annotation, and only that.
    assert needs_report(missing, stored=None, last_reported=None)
    assert not needs_report(injected, stored="injected", last_reported=None)
    # A running one reports each change, including a new message for the same status.
    assert not needs_report(injected, stored="not-injected", last_reported=injected)
    assert needs_report(injected, stored="not-injected", last_reported=missing)
    reworded = type(injected)(injected.status, injected.type, injected.reason, "other pods")
    assert needs_report(reworded, stored="injected", last_reported=injected)
