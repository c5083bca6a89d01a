"""What the webhook answers, as data: CREATE fails closed, UPDATEs never block a cluster.

Pure: the kopf handler in :mod:`.webhook` passes the request's object, old object and
operation, and turns the :class:`Admission` into a patch, warnings or a rejection.

* CREATE of an opted-in cluster: :func:`.mutation.prepare`; anything wrong (a bad annotation,
  a Ray version outside the supported range) is refused with the reason.
* UPDATE: only what touches the pod templates or the ``ray-pixi.io/*`` annotations matters
  (:func:`needs_admission`, mirrored by the chart's ``matchConditions`` so the API server does not
  even call the webhook for the rest). Missing injected items come back from the record
  (:func:`.mutation.restore`); ``ray-pixi.io/migrate`` moves the cluster to the current settings
  (:func:`.mutation.migrate`). An UPDATE of an object being deleted, or of one that was already
  invalid before, is never refused: it gets a warning instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .adoption import adopt_legacy
from .errors import InjectionError
from .injection import carries_injection
from .mutation import migrate, prepare, restore
from .options import build_cluster_options
from .record import Record, RecordError, read_record
from .settings import Settings
from .templates import cluster_spec, is_opted_in, walk_templates

__all__ = ["Admission", "admit", "needs_admission", "resolve_record"]

Body = dict[str, Any]

# The reconciler's own writes; they never need the webhook.
_IGNORED_ANNOTATIONS = frozenset(names.RECONCILER_ANNOTATIONS)


@dataclass(frozen=True)
class Admission:
    """The answer: ``body`` to patch to (None: unchanged), warnings, or ``refusal`` text."""

    body: Body | None = None
    warnings: tuple[str, ...] = ()
    refusal: str | None = None


def needs_admission(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether an UPDATE can change what ray-pixi does: the Python twin of the chart's CEL.

    False for an object being deleted, and for UPDATEs that change neither a pod template nor a
    ``ray-pixi.io/*`` annotation (other than the reconciler's status and reported): replica
    patches, finalizers, suspend, status.
    """
    if old is None:
        return True
    if (new.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return _templates(new) != _templates(old) or _ray_pixi_annotations(
        new
    ) != _ray_pixi_annotations(old)


def _templates(body: Mapping[str, Any]) -> tuple[Any, ...]:
    try:
        spec = cluster_spec(body) or {}
    except InjectionError:  # not a kind ray-pixi prepares: compare what a RayCluster has
        spec = body.get("spec") or {}
    return tuple(group.template for group in walk_templates(spec))


def _ray_pixi_annotations(body: Mapping[str, Any]) -> dict[str, Any]:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return {
        key: value
        for key, value in annotations.items()
        if key.startswith(names.ANNOTATION_PREFIX) and key not in _IGNORED_ANNOTATIONS
    }


def resolve_record(
    new: Mapping[str, Any], old: Mapping[str, Any] | None
) -> tuple[Record | None, str | None]:
    """The record an UPDATE works from, and the reason the new object's own was unusable.

    The new object's record wins; else the old object's (a RayService's whole-object update
    replaces its cluster's annotations); else one adopted from 0.1.0's template annotations.
    """
    problem = None
    for body in (new, old):
        if body is None:
            continue
        try:
            record = read_record((body.get("metadata") or {}).get("annotations") or {})
        except RecordError as error:
            problem = problem or str(error)
            continue
        if record is not None:
            return record, problem
    for body in (new, old):
        if body is None:
            continue
        spec = cluster_spec(body)
        if spec is None:
            continue
        try:
            adopted = adopt_legacy(spec)
        except InjectionError:
            continue
        if adopted is not None:
            return adopted, problem
    return None, problem


def admit(
    operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None, settings: Settings
) -> Admission:
    """Decide the webhook's answer for one AdmissionReview of a RayCluster."""
    if not is_opted_in(new):
        return Admission()
    if operation == "CREATE":
        try:
            preparation = prepare(new, settings)
        except InjectionError as error:
            return Admission(refusal=str(error))
        return Admission(
            body=preparation.body if preparation.changed else None,
            warnings=(*preparation.notes, *(str(kept) for kept in preparation.kept)),
        )
    if operation != "UPDATE" or not needs_admission(new, old):
        return Admission()
    try:
        return _update(new, old, settings)
    except InjectionError as error:
        if old is not None and _was_invalid(old, settings):
            return Admission(
                warnings=(f"{error} (the cluster was already invalid before; admitted unchanged)",)
            )
        return Admission(refusal=str(error))


def _update(new: Mapping[str, Any], old: Mapping[str, Any] | None, settings: Settings) -> Admission:
    annotations = (new.get("metadata") or {}).get("annotations") or {}
    record, problem = resolve_record(new, old)
    if record is None and problem is not None:
        raise InjectionError(
            f"metadata.annotations[{names.INJECTION_ANNOTATION!r}] cannot be read: {problem}. "
            "ray-pixi writes this annotation itself: remove it, or restore the value it wrote"
        )
    warnings: list[str] = []
    # Bad ray-pixi annotations only matter for a migration, but say so while the user is here.
    try:
        build_cluster_options(settings, annotations)
    except InjectionError as error:
        if names.MIGRATE_ANNOTATION in annotations and _migrating(annotations, record):
            raise
        if old is not None and _options_invalid(old, settings):
            warnings.append(f"{error} (ignored until the cluster is migrated)")
        else:
            raise
    token = annotations.get(names.MIGRATE_ANNOTATION)
    if token is not None and _migrating(annotations, record):
        preparation = migrate(new, settings, record, str(token))
        warnings += [str(kept) for kept in preparation.kept]
    elif record is not None:
        preparation = restore(new, record)
    else:
        spec = cluster_spec(new)
        if spec is not None and not carries_injection(spec):
            warnings.append(
                f"this RayCluster is labelled {names.ENABLED_LABEL}={names.ENABLED_VALUE} but was "
                "never prepared by ray-pixi (created while the webhook was unreachable?); to "
                f"prepare it, set the annotation {names.MIGRATE_ANNOTATION} to any new value"
            )
        return Admission(warnings=tuple(warnings))
    return Admission(
        body=preparation.body if preparation.changed else None, warnings=tuple(warnings)
    )


def _migrating(annotations: Mapping[str, Any], record: Record | None) -> bool:
    token = annotations.get(names.MIGRATE_ANNOTATION)
    return token is not None and (record is None or str(token) != record.migration)


def _options_invalid(body: Mapping[str, Any], settings: Settings) -> bool:
    try:
        build_cluster_options(settings, (body.get("metadata") or {}).get("annotations") or {})
    except InjectionError:
        return True
    return False


def _was_invalid(old: Mapping[str, Any], settings: Settings) -> bool:
    """Whether the stored object was already unpreparable (so refusing now would block it)."""
    if _options_invalid(old, settings):
        return True
    record, problem = resolve_record(old, None)
    if problem is not None:
        return True
    if record is None:
        return False
    try:
        restore(old, record)
    except InjectionError:
        return True
    return False
