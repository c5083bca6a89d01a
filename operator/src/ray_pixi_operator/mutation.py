"""The mutation: a Ray object + settings -> the same object, prepared for runtime_env "pixi".

Pure: no kopf, no API calls. The admission webhook, the reconciler and ``render`` call it.
Applying any of it twice equals applying it once.

For the head group and every worker group of an opted-in cluster it adds, to the pod template:

* the volume ``ray-pixi`` (emptyDir, hostPath or an existing PVC), mounted at ``/ray-pixi`` in
  the Ray container (``containers[0]``);
* the init container ``ray-pixi-payload``, appended after the user's init containers (KubeRay
  appends ``wait-gcs-ready`` after it when it builds the pod), which copies pixi and the plugin
  onto the volume;
* env vars on the Ray container only: ``RAY_RUNTIME_ENV_PLUGINS`` (merged), ``PYTHONPATH``
  (prepended), and the plugin's paths and cache cap.

and writes the injection record (:mod:`.record`) on the object's metadata. Three entry points:

* :func:`prepare` (CREATE, ``render``): a new cluster gets the current settings; one that
  carries a record (rendered offline, re-applied) keeps it; one ray-pixi 0.1.0 prepared is
  adopted as it is.
* :func:`restore` (UPDATE): put back only what is missing, from the record.
* :func:`migrate` (the explicit ``ray-pixi.io/migrate`` action): the current settings replace the
  add-on's recorded items; the user's own items stay.

A user's env var, volume or init container of the same name wins; it is reported in
:attr:`Preparation.kept`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import names
from .compat import IncompatibleRay, check_ray_version
from .record import Injection, Record, RecordError, read_record, template_key
from .settings import (
    Settings,
    check_cache_host_path,
    check_cache_size_limit,
    check_cache_volume,
    check_pixi_version,
    check_plugin_cache_size_gb,
    check_pvc_name,
)

__all__ = [
    "ClusterOptions",
    "InjectionError",
    "KeptValue",
    "Preparation",
    "adopt_legacy",
    "apply_injection",
    "build_cluster_options",
    "build_env",
    "build_init_container",
    "build_injection",
    "build_volume",
    "cluster_spec",
    "cluster_spec_path",
    "is_opted_in",
    "migrate",
    "prepare",
    "restore",
    "template_paths",
]

Body = dict[str, Any]

# Requests/limits for the init container: it only copies files.
INIT_CONTAINER_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


class InjectionError(ValueError):
    """The object cannot be prepared; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class ClusterOptions:
    """What one cluster gets: the operator's settings with its annotations applied."""

    payload_image: str
    payload_image_pull_policy: str
    pixi_version: str | None
    cache_volume: str
    cache_size_limit: str | None
    cache_host_path: str | None
    cache_pvc_name: str | None
    plugin_cache_size_gb: float

    def to_json(self) -> Body:
        """The record's ``settings``: the values, camelCase, unset ones left out."""
        values = {
            "payloadImage": self.payload_image,
            "payloadImagePullPolicy": self.payload_image_pull_policy,
            "pixiVersion": self.pixi_version,
            "cacheVolume": self.cache_volume,
            "cacheSizeLimit": self.cache_size_limit,
            "cacheHostPath": self.cache_host_path,
            "cachePvcName": self.cache_pvc_name,
            "pluginCacheSizeGB": self.plugin_cache_size_gb,
        }
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class KeptValue:
    """A user's value that the add-on would have set differently, and left alone."""

    path: str
    value: Any
    injected: Any

    def __str__(self) -> str:
        return (
            f"{self.path} keeps the user's {_short(self.value)} "
            f"instead of ray-pixi's {_short(self.injected)}"
        )


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


# --- Selection ---


def is_opted_in(body: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return labels.get(names.ENABLED_LABEL) == names.ENABLED_VALUE


def cluster_spec_path(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Where the RayCluster spec lives in a RayCluster, RayJob or RayService."""
    kind = body.get("kind")
    api_version = str(body.get("apiVersion", ""))
    if api_version.split("/")[0] != names.RAY_API_GROUP or kind not in _SPEC_PATHS:
        raise InjectionError(
            f"kind {kind!r} (apiVersion {api_version!r}) is not a RayCluster, RayJob or "
            "RayService of ray.io; ray-pixi prepares only those"
        )
    return _SPEC_PATHS[kind]


_SPEC_PATHS = {
    names.RAYCLUSTER_KIND: ("spec",),
    names.RAYJOB_KIND: ("spec", "rayClusterSpec"),
    names.RAYSERVICE_KIND: ("spec", "rayClusterConfig"),
}


def cluster_spec(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The RayCluster spec inside ``body`` (None for a RayJob on an existing cluster)."""
    node: Any = body
    for key in cluster_spec_path(body):
        node = (node or {}).get(key)
    return node if isinstance(node, Mapping) else None


def template_paths(spec: Mapping[str, Any], prefix: str = "spec") -> list[tuple[str, str | None]]:
    """(path, worker group name or None for the head) of every pod template in a cluster spec."""
    paths: list[tuple[str, str | None]] = [(f"{prefix}.headGroupSpec.template", None)]
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        name = group.get("groupName") if isinstance(group, Mapping) else None
        paths.append((f"{prefix}.workerGroupSpecs[{index}].template", name))
    return paths


def _groups(spec: Body, prefix: str) -> Iterator[tuple[str, str, Body]]:
    """(record key, path, group) of the head group and each worker group, checked."""
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict) or not isinstance(head.get("template"), dict):
        raise InjectionError(f"{prefix}.headGroupSpec.template is missing: a RayCluster needs it")
    yield template_key(None), f"{prefix}.headGroupSpec.template", head
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        path = f"{prefix}.workerGroupSpecs[{index}].template"
        if not isinstance(group, dict) or not isinstance(group.get("template"), dict):
            raise InjectionError(f"{path} is missing: every worker group needs a pod template")
        yield template_key(str(group.get("groupName", index))), path, group


def _ray_container(template: Mapping[str, Any], path: str) -> Body:
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers or not isinstance(containers[0], dict):
        raise InjectionError(
            f"{path}.spec.containers is empty: KubeRay runs Ray in containers[0], add it"
        )
    return containers[0]


# --- Options ---


def build_cluster_options(settings: Settings, annotations: Mapping[str, str]) -> ClusterOptions:
    """Apply a cluster's ``ray-pixi.io/*`` annotations to the settings; reject bad ones."""
    unknown = sorted(
        key
        for key in annotations
        if key.startswith(names.ANNOTATION_PREFIX) and key not in names.KNOWN_ANNOTATIONS
    )
    if unknown:
        raise InjectionError(
            f"metadata.annotations has unknown ray-pixi annotation {unknown[0]!r}: "
            f"use one of {', '.join(names.USER_ANNOTATIONS)}"
        )

    def read(key: str, check: Callable[[str], Any]) -> Any:
        raw = annotations.get(key)
        if raw is None:
            return None
        try:
            return check(str(raw).strip())
        except ValueError as error:
            raise InjectionError(
                f"metadata.annotations[{key!r}] {error}, got {raw!r}: fix or remove the annotation"
            ) from None

    pixi_version = read(names.PIXI_VERSION_ANNOTATION, check_pixi_version)
    kind = read(names.CACHE_VOLUME_ANNOTATION, check_cache_volume)
    size_limit = read(names.CACHE_SIZE_LIMIT_ANNOTATION, check_cache_size_limit)
    host_path = read(names.CACHE_HOST_PATH_ANNOTATION, check_cache_host_path)
    pvc_name = read(names.CACHE_PVC_NAME_ANNOTATION, check_pvc_name)
    cache_gb = read(names.PLUGIN_CACHE_SIZE_GB_ANNOTATION, check_plugin_cache_size_gb)

    kind = kind or settings.cache_volume
    for key, value, wanted in (
        (names.CACHE_SIZE_LIMIT_ANNOTATION, size_limit, "emptyDir"),
        (names.CACHE_HOST_PATH_ANNOTATION, host_path, "hostPath"),
        (names.CACHE_PVC_NAME_ANNOTATION, pvc_name, "persistentVolumeClaim"),
    ):
        if value is not None and kind != wanted:
            raise InjectionError(
                f"metadata.annotations[{key!r}] applies only with "
                f"{names.CACHE_VOLUME_ANNOTATION}: {wanted}, but the cache volume is {kind}: "
                f"remove it or set {names.CACHE_VOLUME_ANNOTATION}: {wanted}"
            )
    if kind == "persistentVolumeClaim":
        pvc_name = pvc_name or settings.cache_pvc_name
        if pvc_name is None:
            raise InjectionError(
                f"metadata.annotations[{names.CACHE_VOLUME_ANNOTATION!r}] is "
                "persistentVolumeClaim but no claim is named: add the annotation "
                f"{names.CACHE_PVC_NAME_ANNOTATION} with an existing ReadWriteMany claim"
            )
    return ClusterOptions(
        payload_image=settings.payload_image,
        payload_image_pull_policy=settings.payload_image_pull_policy,
        pixi_version=pixi_version or settings.pixi_version,
        cache_volume=kind,
        cache_size_limit=(size_limit or settings.cache_size_limit) if kind == "emptyDir" else None,
        cache_host_path=(host_path or settings.cache_host_path) if kind == "hostPath" else None,
        cache_pvc_name=pvc_name if kind == "persistentVolumeClaim" else None,
        plugin_cache_size_gb=cache_gb or settings.plugin_cache_size_gb,
    )


# --- Builders ---


def build_volume(options: ClusterOptions) -> Body:
    if options.cache_volume == "hostPath":
        return {
            "name": names.VOLUME_NAME,
            "hostPath": {"path": options.cache_host_path, "type": "DirectoryOrCreate"},
        }
    if options.cache_volume == "persistentVolumeClaim":
        return {
            "name": names.VOLUME_NAME,
            "persistentVolumeClaim": {"claimName": options.cache_pvc_name},
        }
    empty_dir = {"sizeLimit": options.cache_size_limit} if options.cache_size_limit else {}
    return {"name": names.VOLUME_NAME, "emptyDir": empty_dir}


def build_init_container(options: ClusterOptions, ray_container: Mapping[str, Any]) -> Body:
    """The payload installer; it runs as the Ray container's user when that one is explicit."""
    init = {
        "name": names.INIT_CONTAINER_NAME,
        "image": options.payload_image,
        "imagePullPolicy": options.payload_image_pull_policy,
        "command": list(names.PAYLOAD_COMMAND),
        "resources": copy.deepcopy(INIT_CONTAINER_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}],
    }
    return _run_as_ray_user(init, ray_container)


def _run_as_ray_user(init: Mapping[str, Any], ray_container: Mapping[str, Any]) -> Body:
    """The init container as the Ray container's explicit user, so that /ray-pixi/store and
    /ray-pixi/pixi-cache belong to the user that writes them; the image's user otherwise."""
    result = copy.deepcopy(dict(init))
    security = result.setdefault("securityContext", {})
    security.pop("runAsUser", None)
    security.pop("runAsGroup", None)
    ray_security = ray_container.get("securityContext") or {}
    run_as_user = ray_security.get("runAsUser")
    if isinstance(run_as_user, int) and run_as_user > 0:
        security["runAsUser"] = run_as_user
        if isinstance(ray_security.get("runAsGroup"), int):
            security["runAsGroup"] = ray_security["runAsGroup"]
    return result


def build_env(options: ClusterOptions) -> list[Body]:
    """The Ray container's env vars that the add-on sets whole (a user's value wins)."""
    env = [
        {"name": names.PIXI_EXE_ENV, "value": names.PIXI_EXE_PATH},
        {"name": names.STORE_DIR_ENV, "value": names.STORE_DIR},
        {"name": names.PIXI_CACHE_DIR_ENV, "value": names.PIXI_CACHE_DIR},
        {
            "name": names.PLUGIN_CACHE_SIZE_GB_ENV,
            "value": format(options.plugin_cache_size_gb, "g"),
        },
    ]
    if options.pixi_version is not None:
        env.append({"name": names.PIXI_VERSION_ENV, "value": options.pixi_version})
    return env


def build_injection(options: ClusterOptions, ray_container: Mapping[str, Any]) -> Injection:
    """Everything one pod template gets, for a template whose Ray container is ``ray_container``."""
    return Injection(
        volumes=(build_volume(options),),
        volume_mounts=({"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH},),
        init_containers=(build_init_container(options, ray_container),),
        runtime_env_plugins=({"class": names.PLUGIN_CLASS},),
        env=tuple(build_env(options)),
        python_path=(names.PAYLOAD_PYTHON_DIR,),
    )


def _for_new_template(base: Injection, ray_container: Mapping[str, Any]) -> Injection:
    """A recorded injection for a template the record never saw (a worker group added later)."""
    return replace(
        base,
        init_containers=tuple(
            _run_as_ray_user(init, ray_container)
            if init.get("name") == names.INIT_CONTAINER_NAME
            else copy.deepcopy(init)
            for init in base.init_containers
        ),
    )


# --- Putting items into a template ---


def apply_injection(
    template: Mapping[str, Any],
    injection: Injection,
    path: str = "template",
    previous: Injection | None = None,
) -> tuple[Body, list[KeptValue]]:
    """Add the items of ``injection`` that a pod template lacks; ``path`` names it in messages.

    An item already there is left alone: it equals the injection's, or it is the user's (then
    reported as kept). With ``previous`` (a migration), an item equal to the previous injection's
    is the add-on's and is replaced; one the previous injection had and this one has not is
    removed. The order of additions is fixed, so restoring what a replaced template lost gives
    back the very same template.
    """
    new = copy.deepcopy(dict(template))
    ray = _ray_container(new, path)
    pod = new["spec"]
    before = previous or Injection()
    kept: list[KeptValue] = []
    env_path = f"{path}.spec.containers[0].env"
    _merge_items(pod, "volumes", injection.volumes, before.volumes, f"{path}.spec.volumes", kept)
    _merge_mounts(ray, injection.volume_mounts, before.volume_mounts, path)
    _merge_items(
        pod,
        "initContainers",
        injection.init_containers,
        before.init_containers,
        f"{path}.spec.initContainers",
        kept,
    )
    _merge_plugins(ray, injection.runtime_env_plugins, before.runtime_env_plugins, env_path)
    _merge_items(ray, "env", injection.env, before.env, env_path, kept)
    _merge_pythonpath(ray, injection.python_path, before.python_path, env_path)
    _merge_annotations(new, injection.annotations, before.annotations)
    return new, kept


def _merge_items(
    owner: Body,
    field: str,
    desired: tuple[Body, ...],
    previous: tuple[Body, ...],
    path: str,
    kept: list[KeptValue],
) -> None:
    """Name-keyed list ``owner[field]``: add what is missing, keep the user's, replace ours."""
    if not desired and not previous:
        return
    items = owner.get(field)
    if items is None:
        if not desired:
            return
        items = owner[field] = []
    by_name = {item.get("name"): item for item in previous}
    for want in desired:
        index = _index(items, want["name"])
        if index is None:
            items.append(copy.deepcopy(want))
        elif items[index] == want:
            continue
        elif items[index] == by_name.get(want["name"]):
            items[index] = copy.deepcopy(want)
        else:
            kept.append(KeptValue(f"{path}[{want['name']}]", items[index], want))
    wanted = {want["name"] for want in desired}
    for old in previous:
        index = _index(items, old.get("name"))
        if old.get("name") not in wanted and index is not None and items[index] == old:
            del items[index]


def _index(items: list[Any], name: Any) -> int | None:
    return next(
        (i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == name),
        None,
    )


def _merge_mounts(
    ray: Body, desired: tuple[Body, ...], previous: tuple[Body, ...], path: str
) -> None:
    if not desired and not previous:
        return
    mounts = ray.setdefault("volumeMounts", []) if desired else ray.get("volumeMounts") or []
    where = f"{path}.spec.containers[0].volumeMounts"
    for want in desired:
        target = str(want["mountPath"]).rstrip("/")
        found = next((m for m in mounts if str(m.get("mountPath", "")).rstrip("/") == target), None)
        if found is None:
            mounts.append(copy.deepcopy(want))
        elif found.get("name") != want["name"]:
            raise InjectionError(
                f"{where} mounts volume {found.get('name')!r} at {want['mountPath']}, which "
                f"ray-pixi reserves for its volume {want['name']!r}: mount it elsewhere, "
                f"or name that volume {want['name']!r} to use it as the pixi cache"
            )
    wanted = {str(want["mountPath"]).rstrip("/") for want in desired}
    for old in previous:
        if str(old["mountPath"]).rstrip("/") not in wanted and old in mounts:
            mounts.remove(old)


def _find(env: list[Body], name: str) -> Body | None:
    return next((item for item in env if item.get("name") == name), None)


def _plain_value(item: Body, path: str, what: str) -> str:
    if "valueFrom" in item:
        raise InjectionError(
            f"{path}[{item['name']}] is set with valueFrom, so ray-pixi cannot add {what} to it: "
            f"set it with value instead"
        )
    return str(item.get("value") or "")


def _merge_plugins(
    ray: Body, desired: tuple[Body, ...], previous: tuple[Body, ...], path: str
) -> None:
    """Register the plugins in RAY_RUNTIME_ENV_PLUGINS, keeping the user's plugins."""
    if not desired and not previous:
        return
    env = ray.setdefault("env", []) if desired else ray.get("env") or []
    item = _find(env, names.RUNTIME_ENV_PLUGINS_ENV)
    if item is None:
        if desired:
            env.append({"name": names.RUNTIME_ENV_PLUGINS_ENV, "value": json.dumps(list(desired))})
        return
    raw = _plain_value(item, path, ", ".join(json.dumps(entry) for entry in desired))
    try:
        plugins = json.loads(raw) if raw.strip() else []
    except ValueError:
        plugins = None
    if not isinstance(plugins, list):
        raise InjectionError(
            f"{path}[{names.RUNTIME_ENV_PLUGINS_ENV}] must be a JSON list of plugins such as "
            f'[{{"class": "my_module.MyPlugin"}}], got {raw!r}: fix it (ray-pixi appends '
            f"{', '.join(json.dumps(entry) for entry in desired)}) or remove it"
        )
    classes = {p.get("class") for p in plugins if isinstance(p, dict)}
    wanted = {entry.get("class") for entry in desired}
    merged = [
        p
        for p in plugins
        if not (isinstance(p, dict) and p in previous and p.get("class") not in wanted)
    ]
    merged += [entry for entry in desired if entry.get("class") not in classes]
    if merged != plugins:
        item["value"] = json.dumps(merged)


def _merge_pythonpath(
    ray: Body, desired: tuple[str, ...], previous: tuple[str, ...], path: str
) -> None:
    """Prepend the payload's Python dirs so Ray's runtime_env agent can import ray_pixi."""
    if not desired and not previous:
        return
    env = ray.setdefault("env", []) if desired else ray.get("env") or []
    item = _find(env, names.PYTHONPATH_ENV)
    if item is None:
        if desired:
            env.append({"name": names.PYTHONPATH_ENV, "value": ":".join(desired)})
        return
    value = _plain_value(item, path, ":".join(desired))
    entries = [entry for entry in value.split(":") if entry]
    kept = [e for e in entries if e in desired or e not in previous]
    merged = [d for d in desired if d not in kept] + kept
    if merged != entries:
        item["value"] = ":".join(merged)


def _merge_annotations(
    template: Body, desired: Mapping[str, str], previous: Mapping[str, str]
) -> None:
    if not desired and not previous:
        return
    metadata = template.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    for key, value in previous.items():
        if key not in desired and annotations.get(key) == value:
            del annotations[key]
    missing = {k: v for k, v in desired.items() if k not in annotations}
    if missing:
        template.setdefault("metadata", metadata)
        metadata.setdefault("annotations", annotations)
        annotations.update(missing)


# --- Preparation ---


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
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
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
    per_template: dict[str, Injection] = {}
    for key, path, group in _groups(spec, prefix):
        ray = _ray_container(group["template"], path)
        injection = build_injection(options, ray)
        before = None
        if previous is not None:
            before = previous.injection_for(key) or _for_new_template(previous.injection, ray)
        group["template"], group_kept = apply_injection(group["template"], injection, path, before)
        kept += group_kept
        per_template[key] = injection
    record = Record.build(
        options.to_json(),
        per_template,
        build_injection(options, {}),
        prepared_by=names.PREPARED_BY,
        migration=token,
    )
    _write_record(body, record)
    return Preparation(body=body, opted_in=True, changed=True, kept=tuple(kept), record=record)


def _restore(body: Body, spec: Body, prefix: str, record: Record) -> Preparation:
    kept: list[KeptValue] = []
    for key, path, group in _groups(spec, prefix):
        injection = record.injection_for(key)
        if injection is None:
            injection = _for_new_template(record.injection, _ray_container(group["template"], path))
        group["template"], group_kept = apply_injection(group["template"], injection, path)
        kept += group_kept
    _write_record(body, record)
    return Preparation(body=body, opted_in=True, changed=True, kept=tuple(kept), record=record)


# --- Clusters prepared by ray-pixi 0.1.0 ---


def adopt_legacy(spec: Mapping[str, Any], prefix: str = "spec") -> Record | None:
    """The record of a cluster spec ray-pixi 0.1.0 prepared, read from its templates; None if
    no template carries 0.1.0's ``ray-pixi.io/injected`` annotation.

    0.1.0 recorded digests of what it owned in each template; the items with those digests are
    taken as they are, so restoring from this record gives back exactly those templates.
    """
    per_template: dict[str, Injection] = {}
    for key, path, group in _groups(copy.deepcopy(dict(spec)), prefix):
        template = group["template"]
        raw = ((template.get("metadata") or {}).get("annotations") or {}).get(
            names.LEGACY_TEMPLATE_ANNOTATION
        )
        marker = _legacy_marker(raw)
        if marker is None:
            continue
        pod = template.get("spec") or {}
        ray = _ray_container(template, path)
        env = ray.get("env") or []
        owned_env = marker.get("env") or {}
        plugins_item = _find(env, names.RUNTIME_ENV_PLUGINS_ENV)
        pythonpath_item = _find(env, names.PYTHONPATH_ENV)
        per_template[key] = Injection(
            volumes=_owned(pod.get("volumes"), names.VOLUME_NAME, marker.get("volume")),
            volume_mounts=tuple(
                copy.deepcopy(m)
                for m in ray.get("volumeMounts") or []
                if m.get("name") == names.VOLUME_NAME
                and str(m.get("mountPath", "")).rstrip("/") == names.MOUNT_PATH
            ),
            init_containers=_owned(
                pod.get("initContainers"), names.INIT_CONTAINER_NAME, marker.get("initContainer")
            ),
            runtime_env_plugins=(
                ({"class": names.PLUGIN_CLASS},)
                if plugins_item is not None and names.PLUGIN_CLASS in str(plugins_item.get("value"))
                else ()
            ),
            env=tuple(
                copy.deepcopy(item)
                for item in env
                if isinstance(item, dict)
                and owned_env.get(item.get("name")) == _legacy_digest(item)
            ),
            python_path=(
                (names.PAYLOAD_PYTHON_DIR,)
                if pythonpath_item is not None
                and names.PAYLOAD_PYTHON_DIR in str(pythonpath_item.get("value", "")).split(":")
                else ()
            ),
            annotations={names.LEGACY_TEMPLATE_ANNOTATION: str(raw)},
        )
    if not per_template:
        return None
    head = per_template.get(template_key(None)) or next(iter(per_template.values()))
    return Record.build(
        _legacy_settings(head),
        per_template,
        head,
        prepared_by="ray-pixi-operator 0.1.0",
        adopted=True,
    )


def _legacy_marker(raw: Any) -> Body | None:
    try:
        marker = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return marker if isinstance(marker, dict) else None


def _legacy_digest(item: Any) -> str:
    """0.1.0's digest of an item it owned: sha256 of compact sorted JSON, first 16 hex digits."""
    text = json.dumps(item, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _owned(items: Any, name: str, digest: Any) -> tuple[Body, ...]:
    return tuple(
        copy.deepcopy(item)
        for item in items or []
        if isinstance(item, dict) and item.get("name") == name and _legacy_digest(item) == digest
    )


def _legacy_settings(injection: Injection) -> Body:
    """What an adopted 0.1.0 injection's items say about the settings it was built from."""
    settings: Body = {}
    for init in injection.init_containers:
        settings["payloadImage"] = init.get("image")
        settings["payloadImagePullPolicy"] = init.get("imagePullPolicy")
    env = {item.get("name"): item.get("value") for item in injection.env}
    if env.get(names.PIXI_VERSION_ENV):
        settings["pixiVersion"] = env[names.PIXI_VERSION_ENV]
    for volume in injection.volumes:
        for kind in ("emptyDir", "hostPath", "persistentVolumeClaim"):
            if kind in volume:
                settings["cacheVolume"] = kind
        if (volume.get("emptyDir") or {}).get("sizeLimit"):
            settings["cacheSizeLimit"] = volume["emptyDir"]["sizeLimit"]
        if (volume.get("hostPath") or {}).get("path"):
            settings["cacheHostPath"] = volume["hostPath"]["path"]
        if (volume.get("persistentVolumeClaim") or {}).get("claimName"):
            settings["cachePvcName"] = volume["persistentVolumeClaim"]["claimName"]
    cache_gb = env.get(names.PLUGIN_CACHE_SIZE_GB_ENV)
    if cache_gb:
        with contextlib.suppress(ValueError):
            settings["pluginCacheSizeGB"] = float(cache_gb)
    return {key: value for key, value in settings.items() if value is not None}


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) <= {"name", "value"}:
        return repr(value.get("value"))
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
