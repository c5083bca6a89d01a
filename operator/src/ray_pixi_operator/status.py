"""What the reconciler reports about an opted-in RayCluster, as data (no kopf, no API calls).

The webhook injects at admission. This module tells, from the stored RayCluster and its pods,
whether that happened: a cluster created while the webhook was unreachable (or with
failurePolicy Ignore) is not injected, and pods created before an injection that arrived on a
later UPDATE lack it. KubeRay never rebuilds running pods from a changed template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import names
from .mutation import InjectionError, prepare, template_paths
from .settings import Settings

__all__ = ["ClusterStatus", "build_cluster_status", "needs_report", "stale_pods"]

# Kubernetes caps an event's message at 1024 bytes.
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class ClusterStatus:
    """The value of ``ray-pixi.io/status`` and the Kubernetes event that reports it."""

    status: str
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def build_cluster_status(
    body: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], settings: Settings
) -> ClusterStatus:
    """Judge a stored, opted-in RayCluster and the pods KubeRay built for it."""
    try:
        preparation = prepare(body, settings)
    except InjectionError as error:
        return _status(
            names.STATUS_INVALID,
            "Warning",
            "RayPixiInvalid",
            f"ray-pixi cannot prepare this RayCluster: {error}",
        )
    if preparation.changed:
        return _status(
            names.STATUS_NOT_INJECTED,
            "Warning",
            "RayPixiNotInjected",
            f"labelled {names.ENABLED_LABEL}={names.ENABLED_VALUE}, but its pod templates lack "
            "what ray-pixi injects (or carry an older injection): it was created or last updated "
            "while the ray-pixi webhook was unreachable, or before the add-on's settings changed. "
            "Any update of the RayCluster while the webhook is up injects it; pods created before "
            "then cannot use runtime_env 'pixi'.",
        )
    stale = stale_pods(body, pods)
    if stale:
        listed = ", ".join(stale[:10]) + (f" and {len(stale) - 10} more" if len(stale) > 10 else "")
        return _status(
            names.STATUS_PODS_PREDATE_INJECTION,
            "Warning",
            "RayPixiPodsPredateInjection",
            f"{len(stale)} pod(s) were created before ray-pixi's injection and cannot use "
            f"runtime_env 'pixi': {listed}. Delete them so that KubeRay recreates them from the "
            "injected templates.",
        )
    message = "the Ray pods of this cluster are prepared for runtime_env 'pixi'"
    if preparation.kept:
        message += "; user values kept: " + "; ".join(str(kept) for kept in preparation.kept)
    return _status(names.STATUS_INJECTED, "Normal", "RayPixiInjected", message)


def needs_report(
    status: ClusterStatus, *, stored: str | None, last_reported: ClusterStatus | None
) -> bool:
    """One event per change: of what this process last reported or, after a restart, of the
    stored status annotation (so a restarted operator does not repeat every cluster's event)."""
    if last_reported is None:
        return status.status != stored
    return status != last_reported


def stale_pods(body: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of live pods whose injection record differs from their pod template's."""
    spec = body.get("spec") or {}
    head_record: str | None = None
    group_records: dict[str, str | None] = {}
    for path, group in template_paths(spec):
        template = _at(spec, path.removeprefix("spec."))
        record = ((template.get("metadata") or {}).get("annotations") or {}).get(
            names.INJECTED_ANNOTATION
        )
        if group is None:
            head_record = record
        else:
            group_records[group] = record
    every_record = {head_record, *group_records.values()}

    stale = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        labels = metadata.get("labels") or {}
        record = (metadata.get("annotations") or {}).get(names.INJECTED_ANNOTATION)
        if labels.get(names.NODE_TYPE_LABEL) == "head":
            current = record == head_record
        elif labels.get(names.GROUP_LABEL) in group_records:
            current = record == group_records[labels[names.GROUP_LABEL]]
        else:
            current = record is not None and record in every_record
        if not current:
            stale.append(str(metadata.get("name")))
    return sorted(stale)


def _at(spec: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    """Follow a path like ``workerGroupSpecs[1].template`` from :func:`template_paths`."""
    node: Any = spec
    for part in dotted.split("."):
        key, _, index = part.partition("[")
        node = node.get(key) or {}
        if index:
            node = node[int(index.rstrip("]"))]
    return node if isinstance(node, Mapping) else {}


def _status(
    status: str, type_: Literal["Normal", "Warning"], reason: str, message: str
) -> ClusterStatus:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return ClusterStatus(status=status, type=type_, reason=reason, message=message)
