"""Clusters prepared by ray-pixi 0.1.0: their injection record, read from their templates.

0.1.0 kept no record; it marked each template it prepared with ``ray-pixi.io/injected``.
Adopting such a cluster writes the record of what its templates carry and changes nothing
else. Dropping 0.1.0 support is deleting this module and its callers' fallbacks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from . import names
from .record import Injection, Record, template_key
from .templates import find_named, ray_container, walk_templates

__all__ = ["adopt_legacy"]

Body = dict[str, Any]


def adopt_legacy(spec: Mapping[str, Any], prefix: str = "spec") -> Record | None:
    """The record of a cluster spec ray-pixi 0.1.0 prepared, read from its templates; None if
    no template carries 0.1.0's ``ray-pixi.io/injected`` annotation.

    0.1.0 recorded digests of what it owned in each template; the items with those digests are
    taken as they are, so restoring from this record gives back exactly those templates.
    """
    per_template: dict[str, Injection] = {}
    for group in walk_templates(copy.deepcopy(dict(spec)), prefix, strict=True):
        key, path, template = group.key, group.path, group.template
        raw = ((template.get("metadata") or {}).get("annotations") or {}).get(
            names.LEGACY_TEMPLATE_ANNOTATION
        )
        marker = _legacy_marker(raw)
        if marker is None:
            continue
        pod = template.get("spec") or {}
        ray = ray_container(template, path)
        env = ray.get("env") or []
        owned_env = marker.get("env") or {}
        plugins_item = find_named(env, names.RUNTIME_ENV_PLUGINS_ENV)
        pythonpath_item = find_named(env, names.PYTHONPATH_ENV)
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
