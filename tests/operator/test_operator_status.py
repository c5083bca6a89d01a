"""What the reconciler does about an opted-in RayCluster: repairs, adoption, status and events.

Given the stored object, summaries of its pods (as the pod index holds them) and the record it
last saw. Only what needs the user is a Warning; another payload is informational.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ray_pixi_operator import names, prepare
from ray_pixi_operator.record import read_record
from ray_pixi_operator.status import needs_report, reconcile, summarize_pod


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


def pods_of(cluster: dict[str, Any]) -> list[Any]:
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
    return [summarize_pod(pod) for pod in pods]


def reasons(outcome: Any) -> list[tuple[str, str]]:
    return [(event.type, event.reason) for event in outcome.report.events]


def test_labelled_cluster_that_was_never_prepared_is_a_warning_naming_the_fix(manifest, settings):
    cluster = manifest("raycluster-workers")
    outcome = reconcile(cluster, pods_of(cluster), settings)
    assert outcome.report.status == "not-injected"
    assert reasons(outcome) == [("Warning", "RayPixiNotInjected")]
    message = outcome.report.events[0].message
    assert "webhook was unreachable" in message and "ray-pixi.io/migrate" in message
    assert outcome.repair is None  # never prepared: nothing is changed behind the user's back


def test_prepared_cluster_with_its_pods_is_injected(manifest, settings):
    cluster = prepare(manifest("raycluster-workers"), settings).body
    outcome = reconcile(cluster, pods_of(cluster), settings)
    assert outcome.report.status == "injected"
    assert reasons(outcome) == [("Normal", "RayPixiInjected")]
    assert outcome.repair is None


def test_a_settings_change_is_informational_and_changes_nothing(manifest, make_settings):
    cluster = prepare(manifest("raycluster-workers"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0", pixi_version="0.77.0")
    outcome = reconcile(cluster, pods_of(cluster), newer)
    assert outcome.repair is None
    assert outcome.report.status == "injected"
    assert reasons(outcome) == [("Normal", "RayPixiInjected"), ("Normal", "RayPixiPayloadPinned")]
    message = outcome.report.events[1].message
    assert "ghcr.io/example/ray-pixi:0.1.0 (now ghcr.io/example/ray-pixi:0.2.0)" in message
    assert "ray-pixi.io/migrate" in message and "delete" not in message


def test_templates_that_lost_recorded_items_are_repaired_from_the_record(manifest, settings):
    cluster = prepare(manifest("raycluster-workers"), settings).body
    lost = copy.deepcopy(cluster)
    lost["spec"]["workerGroupSpecs"] = manifest("raycluster-workers")["spec"]["workerGroupSpecs"]
    outcome = reconcile(lost, pods_of(cluster), settings)
    assert outcome.repair == cluster
    assert ("Normal", "RayPixiRepaired") in reasons(outcome)
    repaired = next(e for e in outcome.report.events if e.reason == "RayPixiRepaired")
    assert "workerGroupSpecs[cpu]" in repaired.message and "headGroupSpec" not in repaired.message


def test_a_lost_record_comes_back_from_the_one_remembered(manifest, settings):
    """A RayService replaced its cluster's spec and annotations while the webhook was down."""
    cluster = prepare(manifest("raycluster-workers"), settings).body
    record = read_record(cluster["metadata"]["annotations"])
    replaced = copy.deepcopy(cluster)
    replaced["spec"] = manifest("raycluster-workers")["spec"]
    replaced["metadata"]["annotations"] = {}
    assert reconcile(replaced, [], settings).report.status == "not-injected"
    outcome = reconcile(replaced, [], settings, remembered=record)
    assert outcome.repair == cluster
    repaired = next(e for e in outcome.report.events if e.reason == "RayPixiRepaired")
    assert "its injection record" in repaired.message


def test_a_cluster_prepared_by_0_1_0_is_adopted_without_a_template_change(manifest, settings):
    legacy = manifest("raycluster-prepared-by-0.1.0")
    outcome = reconcile(legacy, pods_of(legacy), settings)
    assert outcome.repair is not None
    assert outcome.repair["spec"] == legacy["spec"]
    assert names.INJECTION_ANNOTATION in outcome.repair["metadata"]["annotations"]
    assert ("Normal", "RayPixiAdopted") in reasons(outcome)
    assert outcome.report.status == "injected"
    # Once adopted, nothing more to do.
    assert reconcile(outcome.repair, pods_of(legacy), settings).repair is None


def test_pods_from_an_earlier_template_are_informational(manifest, make_settings):
    before = prepare(manifest("raycluster-head-only"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    after = copy.deepcopy(before)
    after["metadata"]["annotations"]["ray-pixi.io/migrate"] = "1"
    after = prepare(after, newer).body
    outcome = reconcile(after, pods_of(before), newer)
    assert outcome.report.status == "injected"
    event = next(e for e in outcome.report.events if e.reason == "RayPixiPodsOnOtherPayload")
    assert event.type == "Normal"
    assert f"{before['metadata']['name']}-head" in event.message
    assert "delete" not in event.message


def test_terminating_pods_are_ignored(manifest, settings):
    plain = manifest("raycluster-head-only")
    cluster = prepare(plain, settings).body
    (head,) = pods_of(plain)  # built before the injection, and being deleted
    outcome = reconcile(cluster, [dataclasses.replace(head, deleting=True)], settings)
    assert [e.reason for e in outcome.report.events] == ["RayPixiInjected"]


def test_bad_annotations_on_a_prepared_cluster_warn_but_change_nothing(manifest, settings):
    cluster = prepare(manifest("raycluster-head-only"), settings).body
    cluster["metadata"]["annotations"]["ray-pixi.io/cache-volume"] = "nfs"
    outcome = reconcile(cluster, [], settings)
    assert outcome.repair is None
    assert outcome.report.status == "injected"
    assert ("Warning", "RayPixiAnnotationsInvalid") in reasons(outcome)


def test_kept_user_values_are_reported_with_the_injected_status(manifest, settings):
    cluster = manifest("raycluster-head-only")
    ray = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray["env"] = [{"name": "PIXI_CACHE_DIR", "value": "/mnt/cache"}]
    prepared = prepare(cluster, settings).body
    outcome = reconcile(prepared, [], settings)
    assert "user values kept" in outcome.report.events[0].message
    assert "PIXI_CACHE_DIR" in outcome.report.events[0].message


def test_a_report_is_posted_once_per_change(manifest, make_settings):
    cluster = prepare(manifest("raycluster-head-only"), make_settings()).body
    report = reconcile(cluster, [], make_settings()).report
    assert report.reasons == "RayPixiInjected"
    # A restarted reconciler sees the stored status and reasons and stays quiet...
    assert not needs_report(report, stored="injected", stored_reasons=report.reasons,
                            last_reported=None)
    assert needs_report(report, stored=None, last_reported=None)
    assert not needs_report(report, stored="injected", last_reported=report)
    missed = reconcile(manifest("raycluster-head-only"), [], make_settings()).report
    assert needs_report(report, stored="not-injected", last_reported=missed)
    # ...but after an operator upgrade it tells once that the cluster keeps its payload.
    upgraded = reconcile(
        cluster, [], make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    ).report
    assert upgraded.reasons == "RayPixiInjected,RayPixiPayloadPinned"
    assert needs_report(upgraded, stored="injected", stored_reasons=report.reasons,
                        last_reported=None)
