"""The mutation: a Ray object + settings -> the same object, prepared for runtime_env "pixi".

Pure: no kopf, no API calls. The admission webhook, the reconciler and ``render`` call it.
Applying any of it twice equals applying it once. Three entry points:

* :func:`prepare` (CREATE, ``render``): a new cluster gets the current settings; one that
  carries a record (rendered offline, re-applied) keeps it; one ray-pixi 0.1.0 prepared is
  adopted as it is.
* :func:`restore` (UPDATE): put back only what is missing, from the record.
* :func:`migrate` (the explicit ``ray-pixi.io/migrate`` action): the current settings replace the
  add-on's recorded items; the user's own items stay.

Each walks the head group and every worker group (:mod:`.templates`), builds what a template
gets (:mod:`.options`, :mod:`.injection`), merges it with what the user wrote (:mod:`.merge`:
a user's env var, volume or init container of the same name wins, reported in
:attr:`Preparation.kept`), and writes the injection record (:mod:`.record`) on the object's
metadata.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import names
from .adoption import adopt_legacy
from .compat import IncompatibleRay, check_ray_version
from .errors import InjectionError
from .injection import build_for_new_template, build_injection, python_path_mechanism
from .merge import KeptValue, apply_injection
from .options import ClusterOptions, build_cluster_options
from .record import Injection, Record, RecordError, read_record
from .settings import Settings
from .templates import cluster_spec_path, is_opted_in, ray_container, walk_templates

__all__ = ["Preparation", "migrate", "prepare", "restore"]

Body = dict[str, Any]


@dataclass(frozen=True)
class Preparation:
    """The result of :func:`prepare`, :func:`restore` or :func:`migrate`.

    ``record`` is the injection record the object now carries (None when it is not prepared);
    ``notes`` are warnings for the user (kept values are in ``kept``).
    """

    body: Body
    opted_in: bool
    changed: bool
    kept: tuple[KeptValue, ...] = ()
    record: Record | None = None
    notes: tuple[str, ...] = ()
    adopted: bool = False


def prepare(body: Mapping[str, Any], settings: Settings) -> Preparation:
    """Prepare a new RayCluster (or the cluster spec of a RayJob / RayService), if opted in.

    What a CREATE and ``render`` get. An object that already carries a record keeps what the
    record says (rendering twice equals rendering once); one ray-pixi 0.1.0 prepared is adopted
    with its templates unchanged. The compatibility gate runs here.
    """
    new, spec, prefix = _open(body)
    if not is_opted_in(new) or spec is None:
        return Preparation(body=new, opted_in=is_opted_in(new), changed=False)
    annotations = _annotations(new)
    options = build_cluster_options(settings, annotations)
    try:
        note = check_ray_version(spec, annotations)
    except IncompatibleRay as error:
        raise InjectionError(str(error)) from None
    notes = (note,) if note else ()
    record = _read(annotations, "metadata.annotations")
    adopted = False
    if record is None:
        record = adopt_legacy(spec, prefix)
        adopted = record is not None
    token = annotations.get(names.MIGRATE_ANNOTATION)
    if record is None:
        result = _inject(new, spec, prefix, options, previous=None, token=token)
    elif token is not None and token != record.migration:
        result = _inject(new, spec, prefix, options, previous=record, token=token)
    else:
        result = _restore(new, spec, prefix, record)
    return replace(result, changed=result.body != body, notes=notes + result.notes, adopted=adopted)


def restore(body: Mapping[str, Any], record: Record) -> Preparation:
    """Put back the recorded items a template lacks, and the record itself; nothing else.

    What an UPDATE gets, whatever the operator's settings are now: a changed setting never
    changes a prepared cluster's templates. A worker group the record never saw (added later)
    gets the recorded injection too.
    """
    new, spec, prefix = _open(body)
    if spec is None:
        return Preparation(body=new, opted_in=is_opted_in(new), changed=False, record=record)
    result = _restore(new, spec, prefix, record)
    return replace(result, opted_in=is_opted_in(new), changed=result.body != body)


def migrate(
    body: Mapping[str, Any], settings: Settings, previous: Record | None, token: str
) -> Preparation:
    """Prepare a cluster again with the current settings: the explicit move to a new payload.

    The add-on's recorded items are replaced; the user's own values stay. ``token`` (the value
    of ``ray-pixi.io/migrate``) is recorded so the same value never migrates twice.
    """
    new, spec, prefix = _open(body)
    if spec is None:
        return Preparation(body=new, opted_in=is_opted_in(new), changed=False)
    options = build_cluster_options(settings, _annotations(new))
    result = _inject(new, spec, prefix, options, previous=previous, token=token)
    return replace(result, changed=result.body != body)


def _open(body: Mapping[str, Any]) -> tuple[Body, Body | None, str]:
    """A copy of ``body``, the cluster spec inside it (mutable) and that spec's path."""
    spec_path = cluster_spec_path(body)
    new = copy.deepcopy(dict(body))
    parent: Any = new
    for key in spec_path[:-1]:
        parent = parent.get(key) or {}
    spec = parent.get(spec_path[-1])
    return new, spec if isinstance(spec, dict) else None, ".".join(spec_path)


def _annotations(body: Body) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


def _read(annotations: Mapping[str, Any], where: str) -> Record | None:
    try:
        return read_record(annotations)
    except RecordError as error:
        raise InjectionError(
            f"{where}[{names.INJECTION_ANNOTATION!r}] cannot be read: {error}. ray-pixi writes "
            "this annotation itself: remove it, or restore the value ray-pixi wrote"
        ) from None


def _write_record(body: Body, record: Record) -> None:
    text = record.dumps()
    if not isinstance(body.get("metadata"), dict):
        body["metadata"] = {}
    if not isinstance(body["metadata"].get("annotations"), dict):
        body["metadata"]["annotations"] = {}
    annotations = body["metadata"]["annotations"]
    if annotations.get(names.INJECTION_ANNOTATION) != text:
        annotations[names.INJECTION_ANNOTATION] = text


def _inject(
    body: Body,
    spec: Body,
    prefix: str,
    options: ClusterOptions,
    *,
    previous: Record | None,
    token: str | None,
) -> Preparation:
    kept: list[KeptValue] = []
    notes: list[str] = []
    per_template: dict[str, Injection] = {}
    for group in walk_templates(spec, prefix, strict=True):
        ray = ray_container(group.template, group.path)
        pod = group.template["spec"]
        injection = build_injection(options, pod)
        note = python_path_mechanism(options, ray)[2]
        if note and note not in notes:
            notes.append(note)
        before = None
        if previous is not None:
            before = previous.injection_for(group.key) or build_for_new_template(
                previous.injection, pod
            )
        group.spec["template"], group_kept = apply_injection(
            group.template, injection, group.path, before
        )
        kept += group_kept
        per_template[group.key] = injection
    record = Record.build(
        options.to_json(),
        per_template,
        build_injection(options, {}),
        prepared_by=names.PREPARED_BY,
        migration=token,
    )
    _write_record(body, record)
    return Preparation(
        body=body,
        opted_in=True,
        changed=True,
        kept=tuple(kept),
        record=record,
        notes=tuple(notes),
    )


def _restore(body: Body, spec: Body, prefix: str, record: Record) -> Preparation:
    kept: list[KeptValue] = []
    for group in walk_templates(spec, prefix, strict=True):
        injection = record.injection_for(group.key)
        if injection is None:
            ray_container(group.template, group.path)
            injection = build_for_new_template(record.injection, group.template["spec"])
        group.spec["template"], group_kept = apply_injection(group.template, injection, group.path)
        kept += group_kept
    _write_record(body, record)
    return Preparation(body=body, opted_in=True, changed=True, kept=tuple(kept), record=record)
