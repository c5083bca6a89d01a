"""What the reconciler does about an opted-in RayCluster, as data (no kopf, no API calls).

The webhook injects at admission. From the stored RayCluster, a summary of its pods and the
record the reconciler last saw, this module decides:

* a repair: the cluster's templates lack recorded items (an UPDATE that changed them passed
  while the webhook was unreachable), or its record is gone (a RayService replaced its
  annotations then), or it was prepared by ray-pixi 0.1.0 and has no record yet (adoption:
  the record is written, the templates stay as they are);
* the status annotation and the events that report it. Only what needs the user is a Warning
  (a labelled cluster that was never prepared, bad annotations). That a cluster or some of its
  pods run another payload than the operator's current one is informational: they keep working
  and KubeRay replaces pods on its own schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import names
from .admission import resolve_record
from .errors import InjectionError
from .injection import carries_injection, installer_image
from .mutation import restore
from .options import build_cluster_options
from .record import Record, template_key
from .settings import Settings
from .templates import walk_templates

__all__ = [
    "ClusterReport",
    "Event",
    "PodSummary",
    "Reconciliation",
    "needs_report",
    "reconcile",
    "summarize_pod",
]

# Kubernetes caps an event's message at 1024 bytes.
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class PodSummary:
    """What the reconciler keeps about one Ray pod (a few strings, so 1,000 pods stay small)."""

    name: str
    template: str  # the record's key of the template it was built from
    payload_image: str | None  # of its ray-pixi-payload init container; None: not injected
    deleting: bool = False


def summarize_pod(pod: Mapping[str, Any]) -> PodSummary:
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(names.NODE_TYPE_LABEL) == "head":
        template = template_key(None)
    else:
        template = template_key(str(labels.get(names.GROUP_LABEL, "")))
    return PodSummary(
        name=str(metadata.get("name")),
        template=template,
        payload_image=installer_image(pod.get("spec") or {}),
        deleting=bool(metadata.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ClusterReport:
    """The value of ``ray-pixi.io/status`` and the events that report it."""

    status: str
    events: tuple[Event, ...]

    @property
    def reasons(self) -> str:
        """The events' reasons, comma-separated: what ``ray-pixi.io/reported`` records."""
        return ",".join(event.reason for event in self.events)

    @property
    def key(self) -> tuple[str, str]:
        """What must change for the events to be posted again (not counts in messages)."""
        return self.status, self.reasons


@dataclass(frozen=True)
class Reconciliation:
    report: ClusterReport
    repair: dict[str, Any] | None  # the body to patch the cluster to, or None
    record: Record | None  # the record the cluster has (or gets), to remember


def reconcile(
    body: Mapping[str, Any],
    pods: Iterable[PodSummary],
    settings: Settings,
    remembered: Record | None = None,
) -> Reconciliation:
    """Judge a stored, opted-in RayCluster; ``remembered`` is the record last seen on it."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    record, problem = resolve_record(body, None)
    events: list[Event] = []
    if record is None and remembered is not None:
        record = remembered
    invalid = _invalid_annotations(settings, annotations)
    if invalid is not None:
        events.append(
            Event(
                "Warning",
                "RayPixiAnnotationsInvalid",
                f"{invalid}. The cluster keeps what it was prepared with; the annotation only "
                "matters when it is prepared again (ray-pixi.io/migrate)",
            )
        )
    if record is None:
        if problem is not None:
            return _done(names.STATUS_INVALID, events, "Warning", "RayPixiInvalid", problem, None)
        spec = body.get("spec") or {}
        if carries_injection(spec):
            return _done(
                names.STATUS_INJECTED,
                events,
                "Normal",
                "RayPixiInjected",
                "the pod templates carry ray-pixi's injection but no injection record (they "
                "were prepared by hand or by another tool): nothing can be restored from it",
                None,
            )
        status = names.STATUS_INVALID if invalid is not None else names.STATUS_NOT_INJECTED
        return _done(
            status,
            events,
            "Warning",
            "RayPixiNotInjected",
            f"labelled {names.ENABLED_LABEL}={names.ENABLED_VALUE}, but ray-pixi never prepared "
            "its pod templates: it was created while the ray-pixi webhook was unreachable (or "
            "with failurePolicy Ignore). runtime_env 'pixi' cannot run on it. To prepare it, set "
            f"the annotation {names.MIGRATE_ANNOTATION} to a new value (ray-pixi-operator "
            "clusters migrate does that); with upgradeStrategy Recreate KubeRay then recreates "
            "its pods, otherwise pods created afterwards get it",
            None,
        )

    try:
        restored = restore(body, record)
    except InjectionError as error:
        return _done(
            names.STATUS_INVALID,
            events,
            "Warning",
            "RayPixiInvalid",
            f"ray-pixi cannot restore this RayCluster's injection: {error}",
            record,
        )
    repair = restored.body if restored.changed else None
    if repair is not None:
        events.append(_repair_event(body, repair, record, annotations))

    pods = list(pods)
    live = sum(1 for pod in pods if not pod.deleting)
    message = (
        f"the Ray pods of this cluster ({live} now) are prepared for runtime_env 'pixi' with "
        f"payload image {record.payload_image}"
        + (f" and pixi {record.pixi_version}" if record.pixi_version else "")
    )
    if restored.kept:
        message += "; user values kept: " + "; ".join(str(kept) for kept in restored.kept)
    events.insert(0, Event("Normal", "RayPixiInjected", message))

    pinned = _pinned(settings, annotations, record)
    if pinned is not None:
        events.append(Event("Normal", "RayPixiPayloadPinned", pinned))
    differing = _pods_on_other_payload(repair or body, pods)
    if differing is not None:
        events.append(Event("Normal", "RayPixiPodsOnOtherPayload", differing))
    report = ClusterReport(names.STATUS_INJECTED, tuple(_clip(event) for event in events))
    return Reconciliation(report=report, repair=repair, record=record)


def needs_report(
    report: ClusterReport,
    *,
    stored: str | None,
    stored_reasons: str | None = None,
    last_reported: ClusterReport | None,
) -> bool:
    """One round of events per change: of what this process last reported or, after a restart,
    of the stored status and reported annotations (so a restarted reconciler does not repeat
    every cluster's events, yet posts what an operator upgrade changed)."""
    if last_reported is None:
        return report.key != (stored, stored_reasons)
    return report.key != last_reported.key


def _done(
    status: str,
    events: list[Event],
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
    record: Record | None,
) -> Reconciliation:
    events = [Event(type_, reason, message), *events]
    return Reconciliation(
        report=ClusterReport(status, tuple(_clip(event) for event in events)),
        repair=None,
        record=record,
    )


def _invalid_annotations(settings: Settings, annotations: Mapping[str, str]) -> str | None:
    try:
        build_cluster_options(settings, annotations)
    except InjectionError as error:
        return str(error)
    return None


def _repair_event(
    body: Mapping[str, Any],
    repaired: Mapping[str, Any],
    record: Record,
    annotations: Mapping[str, Any],
) -> Event:
    changed = _changed_templates(body, repaired)
    if not changed and record.adopted:
        return Event(
            "Normal",
            "RayPixiAdopted",
            f"prepared by {record.prepared_by}, which kept no injection record: its pod "
            f"templates stay as they are, and the record of what they carry is now in "
            f"metadata.annotations[{names.INJECTION_ANNOTATION!r}]",
        )
    what = f"{len(changed)} pod template(s) ({', '.join(changed)})" if changed else ""
    if names.INJECTION_ANNOTATION not in annotations:
        what += (" and " if what else "") + "its injection record"
    return Event(
        "Normal",
        "RayPixiRepaired",
        f"restored what ray-pixi injected into {what}: an update removed it while the ray-pixi "
        "webhook was unreachable. Only missing items came back, from the injection record",
    )


def _changed_templates(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The record's names of the templates of ``after`` that differ from ``before``'s."""
    old = [group.template for group in walk_templates(before.get("spec") or {})]
    return [
        group.key
        for index, group in enumerate(walk_templates(after.get("spec") or {}))
        if group.template != (old[index] if index < len(old) else None)
    ]


def _pinned(settings: Settings, annotations: Mapping[str, str], record: Record) -> str | None:
    try:
        current = build_cluster_options(settings, annotations)
    except InjectionError:
        return None
    differences = []
    if record.payload_image != current.payload_image:
        differences.append(f"payload image {record.payload_image} (now {current.payload_image})")
    if record.pixi_version != current.pixi_version:
        differences.append(
            f"pixi version {record.pixi_version or 'of the payload'} "
            f"(now {current.pixi_version or 'of the payload'})"
        )
    if not differences:
        return None
    return (
        "prepared with " + " and ".join(differences) + ". It keeps what it was prepared with, "
        "so running pods are never rebuilt by an operator change. To move it to the current "
        f"settings, set the annotation {names.MIGRATE_ANNOTATION} to a new value "
        "(ray-pixi-operator clusters migrate does that)"
    )


def _pods_on_other_payload(body: Mapping[str, Any], pods: Iterable[PodSummary]) -> str | None:
    images = {
        group.key: installer_image(group.pod) for group in walk_templates(body.get("spec") or {})
    }
    other = sorted(
        pod.name
        for pod in pods
        if not pod.deleting and pod.template in images and pod.payload_image != images[pod.template]
    )
    if not other:
        return None
    listed = ", ".join(other[:10]) + (f" and {len(other) - 10} more" if len(other) > 10 else "")
    return (
        f"{len(other)} pod(s) were built from an earlier version of the pod templates and run "
        f"another payload (or none): {listed}. They keep running; KubeRay builds their "
        "replacements from the current templates"
    )


def _clip(event: Event) -> Event:
    if len(event.message) <= MAX_MESSAGE:
        return event
    return Event(event.type, event.reason, event.message[: MAX_MESSAGE - 3] + "...")
