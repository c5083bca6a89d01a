"""`ray-pixi-operator render` on every sample KubeRay ships, as a user who opts them in would.

The samples are KubeRay ray-operator's `config/samples` (the release the cluster harness
builds, tests/kube/go/kuberay-operator), read from the Go module cache that .ci/setup-kube
fills; nothing of them is copied into this repository. Each sample file is rendered whole,
with the opt-in label on its RayClusters, RayJobs, RayServices and RayCronJobs: a sample whose
Ray is supported is prepared (the injection on the head and on every worker group) and renders
to the same text again; one whose Ray is below the floor is refused naming the range.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import CRD_FILES, assert_additions_in_schema
from operator_support import PAYLOAD_IMAGE
from ray_pixi_operator import Settings, names
from ray_pixi_operator.compat import SUPPORTED, describe_supported, parse_version
from ray_pixi_operator.render import RenderError, render
from ray_pixi_operator.templates import cluster_spec_path

from kube.build import KUBERAY, Unavailable, module_source

RAY_KINDS = {
    names.RAYCLUSTER_KIND,
    names.RAYJOB_KIND,
    names.RAYSERVICE_KIND,
    names.RAYCRONJOB_KIND,
}


@dataclass(frozen=True)
class Sample:
    name: str  # relative to config/samples
    documents: list[Any]  # as shipped, with the opt-in label added to each Ray object

    @property
    def ray_objects(self) -> list[dict[str, Any]]:
        return [d for d in self.documents if isinstance(d, dict) and d.get("kind") in RAY_KINDS]

    def text(self) -> str:
        return yaml.safe_dump_all(self.documents, sort_keys=False)


def _samples_dir() -> Path:
    try:
        samples = module_source(KUBERAY) / "config" / "samples"
    except Unavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, so KubeRay's samples must be present: {error}", pytrace=False)
        pytest.skip(f"KubeRay's samples are not available: {error}")
    if not samples.is_dir():
        pytest.fail(f"{samples} is missing from the downloaded module", pytrace=False)
    return samples


def _opted_in(document: Any) -> Any:
    if isinstance(document, dict) and document.get("kind") in RAY_KINDS:
        labels = document.setdefault("metadata", {}).setdefault("labels", None) or {}
        document["metadata"]["labels"] = {**labels, names.ENABLED_LABEL: names.ENABLED_VALUE}
    return document


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    """Every sample file that holds a Ray object (a few hold only an Ingress or a Gateway)."""
    root = _samples_dir()
    found = []
    for path in sorted(root.rglob("*.yaml")):
        documents = [_opted_in(d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
        sample = Sample(str(path.relative_to(root)), documents)
        if sample.ray_objects:
            found.append(sample)
    # Guards the discovery: KubeRay v1.6.2 ships 75 such files.
    assert len(found) >= 50, f"only {len(found)} Ray samples found in {root}"
    return found


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.from_env({"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE})


def _declared_ray(obj: dict[str, Any]) -> tuple[int, ...] | None:
    spec: Any = obj
    for key in cluster_spec_path(obj):
        spec = (spec or {}).get(key)
    return parse_version(str((spec or {}).get("rayVersion", "")))


def _supported(sample: Sample) -> bool:
    declared = [_declared_ray(obj) for obj in sample.ray_objects]
    return all(version is None or version >= SUPPORTED["ray"] for version in declared)


def _templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec: Any = obj
    for key in cluster_spec_path(obj):
        spec = (spec or {}).get(key)
    if not spec:
        return []  # a RayJob that runs on an existing cluster (clusterSelector)
    return [("head", spec["headGroupSpec"]["template"])] + [
        (f"worker group {group['groupName']!r}", group["template"])
        for group in spec.get("workerGroupSpecs") or []
    ]


def _injection_missing(template: dict[str, Any]) -> list[str]:
    """What a prepared pod template lacks, as a Ray pod built from it would show."""
    pod = template["spec"]
    ray = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in ray.get("env", [])}
    missing = []
    plugins = json.loads(env.get("RAY_RUNTIME_ENV_PLUGINS") or "[]")
    if {"class": names.PLUGIN_CLASS} not in plugins:
        missing.append("the plugin in RAY_RUNTIME_ENV_PLUGINS")
    init = [c for c in pod.get("initContainers", []) if c["name"] == names.INIT_CONTAINER_NAME]
    if [c["image"] for c in init] != [PAYLOAD_IMAGE]:
        missing.append("the payload init container")
    if names.VOLUME_NAME not in {v["name"] for v in pod.get("volumes", [])}:
        missing.append("the ray-pixi volume")
    return missing


def test_every_sample_whose_ray_is_supported_is_prepared_on_every_group(samples, settings):
    problems, prepared = [], 0
    for sample in filter(_supported, samples):
        try:
            rendered = render(sample.text(), settings, source=sample.name)
        except RenderError as error:
            problems.append(f"refused although its Ray is supported: {error}")
            continue
        prepared += 1
        documents = [d for d in yaml.safe_load_all(rendered.text) if d is not None]
        assert len(documents) == len(sample.documents), sample.name
        for before, after in zip(sample.documents, documents, strict=True):
            if not (isinstance(before, dict) and before.get("kind") in RAY_KINDS):
                assert after == before, f"{sample.name}: a {before.get('kind')} was changed"
                continue
            if before["kind"] in CRD_FILES:
                assert_additions_in_schema(before, after)
            for where, template in _templates(after):
                missing = _injection_missing(template)
                if missing:
                    problems.append(f"{sample.name} {after['kind']} {where}: lacks {missing}")
    assert not problems, "\n".join(problems)
    # With the floor at Ray 2.10 every sample KubeRay ships is supported.
    assert prepared == len(samples)


def test_rendering_a_prepared_sample_again_changes_nothing(samples, settings):
    for sample in filter(_supported, samples):
        once = render(sample.text(), settings, source=sample.name).text
        assert render(once, settings, source=sample.name).text == once, sample.name


def test_a_sample_is_refused_only_below_the_floor_naming_the_range(samples, settings):
    """Each sample declaring a Ray just below the floor is refused; nothing else refuses it."""
    floor = SUPPORTED["ray"]
    below = f"{floor[0]}.{floor[1] - 1}.0" if floor[1] else f"{floor[0] - 1}.99.0"
    for sample in samples:
        if not _templates_anywhere(sample):
            continue  # no cluster spec to check (a RayJob on an existing cluster)
        old = Sample(sample.name, [_with_ray(d, below) for d in sample.documents])
        with pytest.raises(RenderError) as refused:
            render(old.text(), settings, source=sample.name)
        message = str(refused.value)
        assert f"rayVersion is '{below}'" in message, message
        assert describe_supported() in message, message


def _templates_anywhere(sample: Sample) -> bool:
    return any(_templates(obj) for obj in sample.ray_objects)


def _with_ray(document: Any, version: str) -> Any:
    if not (isinstance(document, dict) and document.get("kind") in RAY_KINDS):
        return document
    old = json.loads(json.dumps(document))
    spec: Any = old
    for key in cluster_spec_path(old):
        spec = (spec or {}).get(key)
    if spec:
        spec["rayVersion"] = version
    return old
