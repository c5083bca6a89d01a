"""The kind flow's RayClusters (e2e/) are the ones the node tier runs: labelled for the
add-on, on the Ray images the node's local images stand in for (this Ray version and the
unsupported one, on this Python), each failure manifest with the property its step relies
on. What can be checked of e2e/'s manifests without a cluster; the node tier runs them
through KubeRay on the real node."""

from __future__ import annotations

import sys

import ray
import yaml
from ray_pixi_operator import names

import e2e.scenario as scenario
from node.images import UNSUPPORTED_RAY
from node.raycluster import E2E_DIR, E2E_RAY_IMAGE, LABELS, cluster_templates

PYTHON = f"{sys.version_info[0]}{sys.version_info[1]}"


def _load(name: str) -> dict:
    return dict(yaml.safe_load((E2E_DIR / name).read_text()))


def _images(cluster: dict) -> set[str]:
    return {c["image"] for t in cluster_templates(cluster) for c in t["spec"]["containers"]}


def test_the_scenarios_cluster_runs_this_ray_with_a_head_and_one_worker() -> None:
    cluster = _load("raycluster.yaml")
    assert cluster["metadata"]["labels"] == LABELS
    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert _images(cluster) == {E2E_RAY_IMAGE.format(ray=ray.__version__, python=PYTHON)}
    assert [g["replicas"] for g in cluster["spec"]["workerGroupSpecs"]] == [1]


def test_the_unsupported_ray_cluster_hides_its_version_from_admission() -> None:
    cluster = _load("raycluster-unsupported-ray.yaml")
    assert cluster["metadata"]["labels"] == LABELS
    assert "rayVersion" not in cluster["spec"]
    assert names.RAY_VERSION_ANNOTATION not in (cluster["metadata"].get("annotations") or {})
    assert _images(cluster) == {E2E_RAY_IMAGE.format(ray=UNSUPPORTED_RAY, python=PYTHON)}


def test_the_read_only_store_cluster_mounts_the_add_ons_volume_read_only() -> None:
    cluster = _load("raycluster-read-only-store.yaml")
    assert cluster["metadata"]["labels"] == LABELS
    (template,) = cluster_templates(cluster)
    mounts = template["spec"]["containers"][0]["volumeMounts"]
    assert mounts == [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH,
                       "readOnly": True}]  # fmt: skip
    assert _images(cluster) == {E2E_RAY_IMAGE.format(ray=ray.__version__, python=PYTHON)}


def test_the_scenarios_names_are_the_add_ons() -> None:
    """e2e/scenario.py runs where the operator is not installed: its copies of the names."""
    assert (scenario.ENABLED_LABEL, scenario.ENABLED_VALUE) == (names.ENABLED_LABEL,
                                                                names.ENABLED_VALUE)
    assert scenario.INJECTION_ANNOTATION == names.INJECTION_ANNOTATION
    assert scenario.VOLUME_NAME == names.VOLUME_NAME
    assert scenario.INIT_CONTAINER_NAME == names.INIT_CONTAINER_NAME
