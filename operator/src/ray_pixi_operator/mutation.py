"""The mutation: a Ray object + settings -> the same object, prepared for runtime_env "pixi".

Pure: no kopf, no API calls. The admission webhook, the reconciler and ``render`` all call
:func:`prepare`. Applying it twice equals applying it once.

For the head group and every worker group of an opted-in cluster it adds, to the pod template:

* the volume ``ray-pixi`` (emptyDir, hostPath or an existing PVC), mounted at ``/ray-pixi`` in
  the Ray container (``containers[0]``) and in the init container;
* the init container ``ray-pixi-payload``, appended after the user's init containers (KubeRay
  appends ``wait-gcs-ready`` after it when it builds the pod), which copies pixi and the plugin
  onto the volume;
* env vars on the Ray container only: ``RAY_RUNTIME_ENV_PLUGINS`` (merged), ``PYTHONPATH``
  (prepended), and the plugin's paths and cache cap;
* the annotation ``ray-pixi.io/injected``, which records what the add-on owns in that template.

A user's env var, volume or init container of the same name wins; it is reported in
:attr:`Preparation.kept`. The record tells such a value from one the add-on set earlier, so a
changed setting (a new pixi version, a new payload image) replaces the add-on's old value.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import names
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
    "build_cluster_options",
    "build_env",
    "build_init_container",
    "build_volume",
    "cluster_spec_path",
    "is_opted_in",
    "prepare",
    "prepare_cluster_spec",
    "prepare_pod_template",
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
    """The result of :func:`prepare`."""

    body: Body
    opted_in: bool
    changed: bool
    kept: tuple[KeptValue, ...] = ()


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


def template_paths(spec: Mapping[str, Any], prefix: str = "spec") -> list[tuple[str, str | None]]:
    """(path, worker group name or None for the head) of every pod template in a cluster spec."""
    paths: list[tuple[str, str | None]] = [(f"{prefix}.headGroupSpec.template", None)]
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        paths.append((f"{prefix}.workerGroupSpecs[{index}].template", group.get("groupName")))
    return paths


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
            f"use one of {', '.join(names.OVERRIDE_ANNOTATIONS)}"
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
    security: Body = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    ray_security = ray_container.get("securityContext") or {}
    run_as_user = ray_security.get("runAsUser")
    if isinstance(run_as_user, int) and run_as_user > 0:
        # So /ray-pixi/store and /ray-pixi/pixi-cache belong to the user that writes them.
        security["runAsUser"] = run_as_user
        if isinstance(ray_security.get("runAsGroup"), int):
            security["runAsGroup"] = ray_security["runAsGroup"]
    return {
        "name": names.INIT_CONTAINER_NAME,
        "image": options.payload_image,
        "imagePullPolicy": options.payload_image_pull_policy,
        "command": list(names.PAYLOAD_COMMAND),
        "resources": copy.deepcopy(INIT_CONTAINER_RESOURCES),
        "securityContext": security,
        "volumeMounts": [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}],
    }


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


# --- Preparation ---


def prepare(body: Mapping[str, Any], settings: Settings) -> Preparation:
    """Prepare a RayCluster, or the cluster spec inside a RayJob / RayService, if opted in."""
    spec_path = cluster_spec_path(body)
    new = copy.deepcopy(dict(body))
    if not is_opted_in(new):
        return Preparation(body=new, opted_in=False, changed=False)
    annotations = (new.get("metadata") or {}).get("annotations") or {}
    options = build_cluster_options(settings, annotations)

    parent: Any = new
    for key in spec_path[:-1]:
        parent = parent.get(key) or {}
    spec = parent.get(spec_path[-1])
    if spec is None:
        # A RayJob that runs on an existing cluster (clusterSelector) has no cluster spec.
        return Preparation(body=new, opted_in=True, changed=False)
    prepared, kept = prepare_cluster_spec(spec, options, prefix=".".join(spec_path))
    parent[spec_path[-1]] = prepared
    return Preparation(body=new, opted_in=True, changed=new != body, kept=tuple(kept))


def prepare_cluster_spec(
    spec: Mapping[str, Any], options: ClusterOptions, prefix: str = "spec"
) -> tuple[Body, list[KeptValue]]:
    """Prepare the head group's and every worker group's pod template."""
    new = copy.deepcopy(dict(spec))
    head = new.get("headGroupSpec")
    if not isinstance(head, dict) or not isinstance(head.get("template"), dict):
        raise InjectionError(f"{prefix}.headGroupSpec.template is missing: a RayCluster needs it")
    kept: list[KeptValue] = []
    head["template"], head_kept = prepare_pod_template(
        head["template"], options, f"{prefix}.headGroupSpec.template"
    )
    kept += head_kept
    for index, group in enumerate(new.get("workerGroupSpecs") or []):
        path = f"{prefix}.workerGroupSpecs[{index}].template"
        if not isinstance(group, dict) or not isinstance(group.get("template"), dict):
            raise InjectionError(f"{path} is missing: every worker group needs a pod template")
        group["template"], group_kept = prepare_pod_template(group["template"], options, path)
        kept += group_kept
    return new, kept


def prepare_pod_template(
    template: Mapping[str, Any], options: ClusterOptions, path: str = "template"
) -> tuple[Body, list[KeptValue]]:
    """Prepare one pod template; ``path`` names it in errors and reports."""
    new = copy.deepcopy(dict(template))
    annotations = new.setdefault("metadata", {}).setdefault("annotations", {})
    record = _read_record(annotations.get(names.INJECTED_ANNOTATION))
    pod = new.setdefault("spec", {})
    containers = pod.get("containers") or []
    if not containers:
        raise InjectionError(
            f"{path}.spec.containers is empty: KubeRay runs Ray in containers[0], add it"
        )
    ray = containers[0]
    kept: list[KeptValue] = []
    new_record: Body = {}

    volumes = pod.setdefault("volumes", [])
    owned = _upsert(
        volumes, build_volume(options), record.get("volume"), f"{path}.spec.volumes", kept
    )
    if owned:
        new_record["volume"] = owned

    mounts = ray.setdefault("volumeMounts", [])
    _ensure_mount(mounts, f"{path}.spec.containers[0].volumeMounts")

    init_containers = pod.setdefault("initContainers", [])
    owned = _upsert(
        init_containers,
        build_init_container(options, ray),
        record.get("initContainer"),
        f"{path}.spec.initContainers",
        kept,
    )
    if owned:
        new_record["initContainer"] = owned

    env = ray.setdefault("env", [])
    env_path = f"{path}.spec.containers[0].env"
    _merge_plugins(env, env_path)
    desired_env = build_env(options)
    recorded_env: Mapping[str, str] = record.get("env") or {}
    owned_env: dict[str, str] = {}
    for item in desired_env:
        owned = _upsert(env, item, recorded_env.get(item["name"]), env_path, kept)
        if owned:
            owned_env[item["name"]] = owned
    # Drop what an earlier injection set and the settings no longer ask for (a pixi version).
    desired_names = {item["name"] for item in desired_env}
    env[:] = [
        item
        for item in env
        if item.get("name") in desired_names
        or recorded_env.get(item.get("name", "")) != _digest(item)
    ]
    _merge_pythonpath(env, env_path)
    if owned_env:
        new_record["env"] = owned_env

    annotations[names.INJECTED_ANNOTATION] = json.dumps(
        new_record, sort_keys=True, separators=(",", ":")
    )
    return new, kept


# --- Helpers ---


def _digest(item: Any) -> str:
    text = json.dumps(item, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_record(raw: Any) -> Body:
    try:
        record = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        record = {}
    return record if isinstance(record, dict) else {}


def _upsert(
    items: list[Body], desired: Body, recorded: str | None, path: str, kept: list[KeptValue]
) -> str | None:
    """Put ``desired`` in the name-keyed list unless a user's item of that name is there.

    An item is the add-on's when it equals ``desired`` or the digest recorded when the add-on
    last wrote it. Returns the digest to record, or None when the user's item stays.
    """
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == desired["name"]:
            if item == desired or _digest(item) == recorded:
                items[index] = desired
                return _digest(desired)
            kept.append(KeptValue(f"{path}[{desired['name']}]", item, desired))
            return None
    items.append(desired)
    return _digest(desired)


def _ensure_mount(mounts: list[Body], path: str) -> None:
    for mount in mounts:
        if mount.get("mountPath", "").rstrip("/") == names.MOUNT_PATH:
            if mount.get("name") != names.VOLUME_NAME:
                raise InjectionError(
                    f"{path} mounts volume {mount.get('name')!r} at {names.MOUNT_PATH}, which "
                    f"ray-pixi reserves for its volume {names.VOLUME_NAME!r}: mount it elsewhere, "
                    f"or name that volume {names.VOLUME_NAME!r} to use it as the pixi cache"
                )
            return
    mounts.append({"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH})


def _find(env: list[Body], name: str) -> Body | None:
    return next((item for item in env if item.get("name") == name), None)


def _plain_value(item: Body, path: str, what: str) -> str:
    if "valueFrom" in item:
        raise InjectionError(
            f"{path}[{item['name']}] is set with valueFrom, so ray-pixi cannot add {what} to it: "
            f"set it with value instead"
        )
    return str(item.get("value") or "")


def _merge_plugins(env: list[Body], path: str) -> None:
    """Register the plugin in RAY_RUNTIME_ENV_PLUGINS, keeping the user's plugins."""
    entry = {"class": names.PLUGIN_CLASS}
    item = _find(env, names.RUNTIME_ENV_PLUGINS_ENV)
    if item is None:
        env.append({"name": names.RUNTIME_ENV_PLUGINS_ENV, "value": json.dumps([entry])})
        return
    raw = _plain_value(item, path, names.PLUGIN_CLASS)
    try:
        plugins = json.loads(raw) if raw.strip() else []
    except ValueError:
        plugins = None
    if not isinstance(plugins, list):
        raise InjectionError(
            f"{path}[{names.RUNTIME_ENV_PLUGINS_ENV}] must be a JSON list of plugins such as "
            f'[{{"class": "my_module.MyPlugin"}}], got {raw!r}: fix it (ray-pixi appends '
            f"{json.dumps(entry)}) or remove it"
        )
    if any(
        isinstance(plugin, dict) and plugin.get("class") == names.PLUGIN_CLASS for plugin in plugins
    ):
        return
    item["value"] = json.dumps([*plugins, entry])


def _merge_pythonpath(env: list[Body], path: str) -> None:
    """Prepend the payload's Python dir so Ray's runtime_env agent can import ray_pixi."""
    item = _find(env, names.PYTHONPATH_ENV)
    if item is None:
        env.append({"name": names.PYTHONPATH_ENV, "value": names.PAYLOAD_PYTHON_DIR})
        return
    entries = [
        entry for entry in _plain_value(item, path, names.PAYLOAD_PYTHON_DIR).split(":") if entry
    ]
    if names.PAYLOAD_PYTHON_DIR not in entries:
        item["value"] = ":".join([names.PAYLOAD_PYTHON_DIR, *entries])


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) <= {"name", "value"}:
        return repr(value.get("value"))
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
