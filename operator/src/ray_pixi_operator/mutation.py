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
import math
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
    check_config_map_name,
    check_disk_budget_gb,
    check_image_pythonpath,
    check_pixi_version,
    check_plugin_cache_size_gb,
    check_pvc_name,
    check_secret_name,
    quantity_bytes,
)

__all__ = [
    "ClusterOptions",
    "InjectionError",
    "KeptValue",
    "Preparation",
    "adopt_legacy",
    "apply_injection",
    "build_cluster_options",
    "build_config_volumes",
    "build_env",
    "build_init_containers",
    "build_injection",
    "build_mounts",
    "build_volume",
    "cluster_spec",
    "cluster_spec_path",
    "is_opted_in",
    "migrate",
    "prepare",
    "python_path_mechanism",
    "ray_identity",
    "restore",
    "template_paths",
]

Body = dict[str, Any]

# Resources of the init containers: what KubeRay gives its own wait-gcs-ready, requests equal
# to limits. A pod's init phase requests the largest init container's, so on worker pods (which
# have wait-gcs-ready) this adds nothing to what the pod asks the scheduler for; a Guaranteed
# pod stays Guaranteed; a namespace quota on limits.cpu or limits.memory admits the pod.
INIT_CONTAINER_RESOURCES = {
    "requests": {"cpu": "200m", "memory": "256Mi"},
    "limits": {"cpu": "200m", "memory": "256Mi"},
}
# Without an explicit budget, an emptyDir with a sizeLimit gets this share of it as the disk
# budget of the store and pixi's package cache: the rest holds the payloads, the install logs
# and an install in progress (pixi downloads and links before the plugin prunes).
DISK_BUDGET_FRACTION = 0.75


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
    payload_image_pull_secrets: tuple[str, ...] = ()
    cache_host_path_prepare: bool = False
    disk_budget_gb: float | None = None
    pixi_config_map: str | None = None
    pixi_auth_secret: str | None = None
    image_pythonpath: str | None = None

    def to_json(self) -> Body:
        """The record's ``settings``: the values, camelCase, unset ones left out."""
        values = {
            "payloadImage": self.payload_image,
            "payloadImagePullPolicy": self.payload_image_pull_policy,
            "payloadImagePullSecrets": list(self.payload_image_pull_secrets) or None,
            "payloadDir": names.payload_dir(self.payload_image),
            "pixiVersion": self.pixi_version,
            "cacheVolume": self.cache_volume,
            "cacheSizeLimit": self.cache_size_limit,
            "cacheHostPath": self.cache_host_path,
            "cacheHostPathPrepare": self.cache_host_path_prepare or None,
            "cachePvcName": self.cache_pvc_name,
            "pluginCacheSizeGB": self.plugin_cache_size_gb,
            "diskBudgetGB": self.disk_budget_gb,
            "pixiConfigMap": self.pixi_config_map,
            "pixiAuthSecret": self.pixi_auth_secret,
            "imagePythonPath": self.image_pythonpath,
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


def _list(owner: Mapping[str, Any], field: str) -> list[Any]:
    """A list field of a manifest, ``[]`` where it is absent or left empty (``env:``)."""
    value = owner.get(field)
    return value if isinstance(value, list) else []


def _ensure_list(owner: Body, field: str) -> list[Any]:
    """The list ``owner[field]``, created when absent or null, to add to."""
    if not isinstance(owner.get(field), list):
        owner[field] = []
    return owner[field]  # type: ignore[no-any-return]


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
    budget = read(names.DISK_BUDGET_GB_ANNOTATION, check_disk_budget_gb)
    config_map = read(names.PIXI_CONFIG_MAP_ANNOTATION, check_config_map_name)
    auth_secret = read(names.PIXI_AUTH_SECRET_ANNOTATION, check_secret_name)
    image_pythonpath = read(names.IMAGE_PYTHONPATH_ANNOTATION, check_image_pythonpath)

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
    size_limit = (size_limit or settings.cache_size_limit) if kind == "emptyDir" else None
    budget, cache_gb = _disk_numbers(settings, size_limit, budget, cache_gb)
    return ClusterOptions(
        payload_image=settings.payload_image,
        payload_image_pull_policy=settings.payload_image_pull_policy,
        payload_image_pull_secrets=settings.payload_image_pull_secrets,
        pixi_version=pixi_version or settings.pixi_version,
        cache_volume=kind,
        cache_size_limit=size_limit,
        cache_host_path=(host_path or settings.cache_host_path) if kind == "hostPath" else None,
        cache_host_path_prepare=settings.cache_host_path_prepare and kind == "hostPath",
        cache_pvc_name=pvc_name if kind == "persistentVolumeClaim" else None,
        plugin_cache_size_gb=cache_gb,
        disk_budget_gb=budget,
        pixi_config_map=config_map or settings.pixi_config_map,
        pixi_auth_secret=auth_secret or settings.pixi_auth_secret,
        image_pythonpath=image_pythonpath,
    )


def _disk_numbers(
    settings: Settings,
    size_limit: str | None,
    budget: float | None,
    cache_gb: float | None,
) -> tuple[float | None, float]:
    """The disk budget and the store's cap for one cluster.

    An explicit budget (annotation, else setting) must leave room below the emptyDir's size
    limit; without one, an emptyDir with a size limit gets DISK_BUDGET_FRACTION of it. The
    store's cap never exceeds the budget: the settings' default is lowered to it, while a cap
    the cluster's annotation asks for above it is refused.
    """
    explicit = budget if budget is not None else settings.disk_budget_gb
    limit_gib = quantity_bytes(size_limit) / 2**30 if size_limit else None
    if explicit is not None and limit_gib is not None and explicit >= limit_gib:
        source = (
            f"metadata.annotations[{names.DISK_BUDGET_GB_ANNOTATION!r}]"
            if budget is not None
            else Settings.env_name("disk_budget_gb")
        )
        raise InjectionError(
            f"{source} is {format(explicit, 'g')} GiB, not less than the cache volume's "
            f"sizeLimit {size_limit}: the volume also holds the payload and an install in "
            "progress; lower it, or remove it to derive the budget from the size limit"
        )
    effective = explicit
    if effective is None and limit_gib is not None:
        effective = math.floor(limit_gib * DISK_BUDGET_FRACTION * 100) / 100
    cap = cache_gb if cache_gb is not None else settings.plugin_cache_size_gb
    if effective is not None and cap > effective:
        if cache_gb is not None:
            raise InjectionError(
                f"metadata.annotations[{names.PLUGIN_CACHE_SIZE_GB_ANNOTATION!r}] is "
                f"{format(cache_gb, 'g')} GB, more than the disk budget of "
                f"{format(effective, 'g')} GiB that the store and pixi's package cache share: "
                "lower it, or raise the budget"
            )
        cap = effective
    return effective, cap


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


def build_config_volumes(options: ClusterOptions) -> list[Body]:
    """pixi's configuration (a ConfigMap) and channel credentials (a Secret), read-only."""
    volumes = []
    if options.pixi_config_map:
        volumes.append(
            {
                "name": names.PIXI_CONFIG_VOLUME,
                "configMap": {"name": options.pixi_config_map, "defaultMode": 0o444},
            }
        )
    if options.pixi_auth_secret:
        volumes.append(
            {
                "name": names.PIXI_AUTH_VOLUME,
                "secret": {"secretName": options.pixi_auth_secret, "defaultMode": 0o444},
            }
        )
    return volumes


def build_mounts(options: ClusterOptions) -> list[Body]:
    """The Ray container's mounts: the volume, and the pixi configuration when there is one."""
    mounts: list[Body] = [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}]
    if options.pixi_config_map:
        mounts.append(
            {"name": names.PIXI_CONFIG_VOLUME, "mountPath": names.PIXI_CONFIG_MOUNT,
             "readOnly": True}
        )  # fmt: skip
    if options.pixi_auth_secret:
        mounts.append(
            {"name": names.PIXI_AUTH_VOLUME, "mountPath": names.PIXI_AUTH_MOUNT, "readOnly": True}
        )
    return mounts


def _restricted(run_as_user: int, run_as_group: int | None = None) -> Body:
    """A container securityContext that the "restricted" Pod Security level admits."""
    security: Body = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_group is not None:
        security["runAsGroup"] = run_as_group
    return security


def ray_identity(pod: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The uid and gid the Ray container runs as, where the pod says so: its own
    securityContext first, then the pod's (None: the image's USER decides)."""
    ray = ((pod.get("containers") or [{}])[0]) or {}
    container = ray.get("securityContext") or {}
    pod_level = pod.get("securityContext") or {}

    def pick(key: str) -> int | None:
        for source in (container, pod_level):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return pick("runAsUser"), pick("runAsGroup")


def build_init_containers(options: ClusterOptions, pod: Mapping[str, Any]) -> list[Body]:
    """The init containers: the opt-in hostPath preparation, then the payload installer.

    The installer runs as the Ray container's user when the pod names a non-root one (so what
    it creates belongs to the user that writes it), else as the image's uid: never as root,
    whatever the pod's own securityContext says. Requests equal limits, as for KubeRay's own
    wait-gcs-ready, so a Guaranteed pod stays Guaranteed and a limits quota admits it.
    """
    uid, gid = ray_identity(pod)
    if uid is None or uid == 0:
        uid, gid = names.PAYLOAD_UID, names.PAYLOAD_UID
    common: Body = {
        "image": options.payload_image,
        "imagePullPolicy": options.payload_image_pull_policy,
        "resources": copy.deepcopy(INIT_CONTAINER_RESOURCES),
        "volumeMounts": [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}],
    }
    inits = []
    if options.cache_host_path_prepare:
        inits.append(
            {
                "name": names.PREPARE_CONTAINER_NAME,
                **copy.deepcopy(common),
                "command": [*names.PREPARE_VOLUME_COMMAND, names.MOUNT_PATH],
                # Root, but with no capability at all: it can change only what root owns (the
                # directory kubelet created), nothing it does not own.
                "securityContext": {**_restricted(0, 0), "runAsNonRoot": False},
            }
        )
    inits.append(
        {
            "name": names.INIT_CONTAINER_NAME,
            **copy.deepcopy(common),
            "command": [*names.PAYLOAD_ADD_COMMAND, names.payload_dir(options.payload_image)],
            "securityContext": _restricted(uid, gid),
        }
    )
    return inits


def python_path_mechanism(
    options: ClusterOptions, ray: Mapping[str, Any]
) -> tuple[bool, tuple[str, ...], str | None]:
    """How the payload reaches the runtime_env agent's sys.path in one Ray container:
    (through the user site, PYTHONPATH entries to prepend, a note for the user).

    A container's PYTHONPATH replaces the image's ENV PYTHONPATH, and the webhook cannot read
    an image; Python's user site adds to sys.path without replacing anything, so it is the
    default. Where the user site cannot work (the container sets PYTHONUSERBASE or
    PYTHONNOUSERSITE; the image's Python is a venv, declared with the image-pythonpath
    annotation), the payload goes on PYTHONPATH, merged with the container's own value or the
    image's as declared.
    """
    payload_python = f"{names.payload_dir(options.payload_image)}/{names.PAYLOAD_PYTHON}"
    env = {item.get("name"): item for item in _list(ray, "env") if isinstance(item, Mapping)}
    blocking = [n for n in (names.PYTHONUSERBASE_ENV, names.PYTHONNOUSERSITE_ENV) if n in env]
    if options.image_pythonpath is None and not blocking:
        return True, (), None
    own = names.PYTHONPATH_ENV in env
    if options.image_pythonpath is not None and not own:
        declared = tuple(e for e in options.image_pythonpath.split(":") if e)
        note = (
            f"ray-pixi sets PYTHONPATH to its payload ({payload_python}) plus the image's "
            f"own value as {names.IMAGE_PYTHONPATH_ANNOTATION} declares it "
            f"({options.image_pythonpath or 'none'}): a container's PYTHONPATH replaces the "
            "image's ENV PYTHONPATH, and ray-pixi cannot read the image. Keep the annotation "
            "equal to the image's ENV PYTHONPATH when the image changes"
        )
        return False, (payload_python, *declared), note
    if own:
        return False, (payload_python,), None
    return (
        False,
        (payload_python,),
        (
            f"containers[0] sets {' and '.join(blocking)}, so Python's user site cannot carry "
            f"ray-pixi's payload: it goes on PYTHONPATH ({payload_python}), which replaces "
            "the image's own ENV PYTHONPATH. If the image sets one, declare it with the "
            f"annotation {names.IMAGE_PYTHONPATH_ANNOTATION}"
        ),
    )


def build_env(options: ClusterOptions, user_site: bool = True) -> list[Body]:
    """The Ray container's env vars that the add-on sets whole (a user's value wins)."""
    payload = names.payload_dir(options.payload_image)
    env = [
        {"name": names.PIXI_EXE_ENV, "value": f"{payload}/{names.PAYLOAD_PIXI_LAUNCHER}"},
        {"name": names.STORE_DIR_ENV, "value": names.STORE_DIR},
        {"name": names.PIXI_CACHE_DIR_ENV, "value": names.PIXI_CACHE_DIR},
        {
            "name": names.PLUGIN_CACHE_SIZE_GB_ENV,
            "value": format(options.plugin_cache_size_gb, "g"),
        },
    ]
    if options.disk_budget_gb is not None:
        env.append({"name": names.DISK_BUDGET_GB_ENV, "value": format(options.disk_budget_gb, "g")})
    if options.pixi_version is not None:
        env.append({"name": names.PIXI_VERSION_ENV, "value": options.pixi_version})
    if options.pixi_config_map:
        env.append(
            {
                "name": names.PIXI_CONFIG_FILE_ENV,
                "value": f"{names.PIXI_CONFIG_MOUNT}/{names.PIXI_CONFIG_KEY}",
            }
        )
    if options.pixi_auth_secret:
        env.append(
            {
                "name": names.RATTLER_AUTH_FILE_ENV,
                "value": f"{names.PIXI_AUTH_MOUNT}/{names.PIXI_AUTH_KEY}",
            }
        )
    if user_site:
        env.append({"name": names.PYTHONUSERBASE_ENV, "value": payload})
    return env


def build_injection(options: ClusterOptions, pod: Mapping[str, Any]) -> Injection:
    """Everything one pod template gets, for a template whose pod spec is ``pod``."""
    ray = (pod.get("containers") or [{}])[0] or {}
    user_site, python_path, _ = python_path_mechanism(options, ray)
    return Injection(
        volumes=(build_volume(options), *build_config_volumes(options)),
        volume_mounts=tuple(build_mounts(options)),
        init_containers=tuple(build_init_containers(options, pod)),
        runtime_env_plugins=({"class": names.PLUGIN_CLASS},),
        env=tuple(build_env(options, user_site)),
        python_path=python_path,
        image_pull_secrets=tuple({"name": name} for name in options.payload_image_pull_secrets),
    )


def _for_new_template(base: Injection, pod: Mapping[str, Any]) -> Injection:
    """A recorded injection for a template the record never saw (a worker group added later):
    its payload installer runs as that template's Ray user."""
    uid, gid = ray_identity(pod)
    return replace(
        base,
        init_containers=tuple(
            _run_as(init, uid, gid) if init.get("name") == names.INIT_CONTAINER_NAME
            else copy.deepcopy(init)
            for init in base.init_containers
        ),
    )  # fmt: skip


def _run_as(init: Mapping[str, Any], uid: int | None, gid: int | None) -> Body:
    result = copy.deepcopy(dict(init))
    security = result.setdefault("securityContext", {})
    if uid is not None and uid > 0:
        security["runAsUser"] = uid
        if gid is not None:
            security["runAsGroup"] = gid
        else:
            security.pop("runAsGroup", None)
    elif "runAsUser" in security:  # a record of this version: the image's uid, explicitly
        security["runAsUser"] = names.PAYLOAD_UID
        security["runAsGroup"] = names.PAYLOAD_UID
    return result


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
    _merge_items(
        pod,
        "imagePullSecrets",
        injection.image_pull_secrets,
        before.image_pull_secrets,
        f"{path}.spec.imagePullSecrets",
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
    if not isinstance(items, list):
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
    mounts = _ensure_list(ray, "volumeMounts") if desired else _list(ray, "volumeMounts")
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
    env = _ensure_list(ray, "env") if desired else _list(ray, "env")
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
    env = _ensure_list(ray, "env") if desired else _list(ray, "env")
    item = _find(env, names.PYTHONPATH_ENV)
    if item is None:
        if desired:
            env.append({"name": names.PYTHONPATH_ENV, "value": ":".join(desired)})
        return
    value = _plain_value(item, path, ":".join(desired))
    entries = [entry for entry in value.split(":") if entry]
    kept = [e for e in entries if e in desired or e not in previous]
    merged = [d for d in desired if d not in kept] + kept
    if not merged and previous:
        # Only the add-on's entries were in it (a migration to the user site): an empty
        # PYTHONPATH would still replace the image's own, so the variable goes.
        env.remove(item)
    elif merged != entries:
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
        template["metadata"] = metadata
        metadata["annotations"] = annotations
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
    for key, path, group in _groups(spec, prefix):
        ray = _ray_container(group["template"], path)
        pod = group["template"]["spec"]
        injection = build_injection(options, pod)
        note = python_path_mechanism(options, ray)[2]
        if note and note not in notes:
            notes.append(note)
        before = None
        if previous is not None:
            before = previous.injection_for(key) or _for_new_template(previous.injection, pod)
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
    for key, path, group in _groups(spec, prefix):
        injection = record.injection_for(key)
        if injection is None:
            _ray_container(group["template"], path)
            injection = _for_new_template(record.injection, group["template"]["spec"])
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
                (names.LEGACY_PAYLOAD_PYTHON_DIR,)
                if pythonpath_item is not None
                and names.LEGACY_PAYLOAD_PYTHON_DIR
                in str(pythonpath_item.get("value", "")).split(":")
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
