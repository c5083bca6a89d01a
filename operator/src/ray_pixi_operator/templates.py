"""Where a Ray object keeps its pod templates, and the one walk over them.

A RayCluster's spec is at ``spec``, a RayJob's at ``spec.rayClusterSpec``, a RayService's at
``spec.rayClusterConfig``, a RayCronJob's at ``spec.jobTemplate.rayClusterSpec``; in it, the
head group's template and every worker group's. The mutation, the webhook's update check and
the reconciler's reports all walk them with :func:`walk_templates`, so they agree on which
templates there are and on the record's name for each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import InjectionError
from .record import template_key

__all__ = [
    "GroupTemplate",
    "cluster_spec",
    "cluster_spec_path",
    "ensure_list",
    "find_named",
    "is_opted_in",
    "list_field",
    "ray_container",
    "walk_templates",
]

Body = dict[str, Any]


def is_opted_in(body: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return labels.get(names.ENABLED_LABEL) == names.ENABLED_VALUE


def cluster_spec_path(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Where the RayCluster spec lives in a RayCluster, RayJob or RayService."""
    kind = body.get("kind")
    api_version = str(body.get("apiVersion", ""))
    if api_version.split("/")[0] != names.RAY_API_GROUP or kind not in _SPEC_PATHS:
        raise InjectionError(
            f"kind {kind!r} (apiVersion {api_version!r}) is not a RayCluster, RayJob, "
            "RayService or RayCronJob of ray.io; ray-pixi prepares only those"
        )
    return _SPEC_PATHS[kind]


_SPEC_PATHS = {
    names.RAYCLUSTER_KIND: ("spec",),
    names.RAYJOB_KIND: ("spec", "rayClusterSpec"),
    names.RAYSERVICE_KIND: ("spec", "rayClusterConfig"),
    # KubeRay copies a RayCronJob's jobTemplate, not its labels or annotations, into each
    # RayJob it creates: the template itself is prepared, and the record stays on the
    # RayCronJob.
    names.RAYCRONJOB_KIND: ("spec", "jobTemplate", "rayClusterSpec"),
}


def cluster_spec(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The RayCluster spec inside ``body`` (None for a RayJob on an existing cluster)."""
    node: Any = body
    for key in cluster_spec_path(body):
        node = (node or {}).get(key)
    return node if isinstance(node, Mapping) else None


@dataclass(frozen=True)
class GroupTemplate:
    """The head group or one worker group of a cluster spec, as the walk meets it.

    ``spec`` is KubeRay's group spec itself (``headGroupSpec`` or a ``workerGroupSpecs`` entry),
    so that the mutation can replace its ``template``.
    """

    key: str  # the record's name for the template (template_key)
    path: str  # where the template is, for messages: spec.workerGroupSpecs[0].template
    spec: Any

    @property
    def template(self) -> Any:
        """The group's ``template`` as written (None where the group has none)."""
        return self.spec.get("template") if isinstance(self.spec, Mapping) else None

    @property
    def pod(self) -> Mapping[str, Any]:
        """The template's pod spec, ``{}`` where there is none."""
        template = self.template
        pod = template.get("spec") if isinstance(template, Mapping) else None
        return pod if isinstance(pod, Mapping) else {}


def walk_templates(
    spec: Mapping[str, Any], prefix: str = "spec", *, strict: bool = False
) -> Iterator[GroupTemplate]:
    """The head group, then each worker group, of a cluster spec at ``prefix``.

    ``strict`` (what preparing needs) refuses a group without a pod template; otherwise such a
    group is met with its ``template`` None (what comparing and reporting need).
    """
    head = spec.get("headGroupSpec")
    path = f"{prefix}.headGroupSpec.template"
    if strict and not (isinstance(head, dict) and isinstance(head.get("template"), dict)):
        raise InjectionError(f"{path} is missing: a RayCluster needs it")
    yield GroupTemplate(template_key(None), path, head)
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        path = f"{prefix}.workerGroupSpecs[{index}].template"
        if strict and not (isinstance(group, dict) and isinstance(group.get("template"), dict)):
            raise InjectionError(f"{path} is missing: every worker group needs a pod template")
        name = group.get("groupName", index) if isinstance(group, Mapping) else index
        yield GroupTemplate(template_key(str(name)), path, group)


def ray_container(template: Mapping[str, Any], path: str) -> Body:
    """The Ray container (KubeRay runs Ray in ``containers[0]``) of a pod template."""
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers or not isinstance(containers[0], dict):
        raise InjectionError(
            f"{path}.spec.containers is empty: KubeRay runs Ray in containers[0], add it"
        )
    return containers[0]


def list_field(owner: Mapping[str, Any], field: str) -> list[Any]:
    """A list field of a manifest, ``[]`` where it is absent or left empty (``env:``)."""
    value = owner.get(field)
    return value if isinstance(value, list) else []


def ensure_list(owner: Body, field: str) -> list[Any]:
    """The list ``owner[field]``, created when absent or null, to add to."""
    if not isinstance(owner.get(field), list):
        owner[field] = []
    return owner[field]  # type: ignore[no-any-return]


def find_named(items: list[Body], name: str) -> Body | None:
    """The item of a name-keyed list (env, volumes, init containers) called ``name``."""
    return next((item for item in items if item.get("name") == name), None)
