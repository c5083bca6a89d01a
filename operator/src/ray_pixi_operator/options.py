"""What one cluster is prepared with: the operator's settings and its ``ray-pixi.io/*``
annotations, checked and combined into :class:`ClusterOptions` (the record's ``settings``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import InjectionError
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

__all__ = ["DISK_BUDGET_FRACTION", "ClusterOptions", "build_cluster_options"]

Body = dict[str, Any]

# Without an explicit budget, an emptyDir with a sizeLimit gets this share of it as the disk
# budget of the store and pixi's package cache: the rest holds the payloads, the install logs
# and an install in progress (pixi downloads and links before the plugin prunes).
DISK_BUDGET_FRACTION = 0.75


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
    # The injected init containers' CPU and memory (requests equal to limits).
    init_container_cpu: str = "200m"
    init_container_memory: str = "256Mi"

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
        init_container_cpu=settings.init_container_cpu,
        init_container_memory=settings.init_container_memory,
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
