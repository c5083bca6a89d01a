"""Merging the add-on's items into a pod template with what the user wrote there.

An item the template lacks is added; one of the same name the user wrote is kept (and reported
as a :class:`KeptValue`); in a migration, only what the previous injection added is replaced
or removed. ``RAY_RUNTIME_ENV_PLUGINS`` and ``PYTHONPATH`` are merged entry by entry.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import InjectionError
from .record import Injection
from .templates import ensure_list, find_named, list_field, ray_container

__all__ = ["KeptValue", "apply_injection"]

Body = dict[str, Any]


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
    ray = ray_container(new, path)
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
    mounts = ensure_list(ray, "volumeMounts") if desired else list_field(ray, "volumeMounts")
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
    env = ensure_list(ray, "env") if desired else list_field(ray, "env")
    item = find_named(env, names.RUNTIME_ENV_PLUGINS_ENV)
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
    env = ensure_list(ray, "env") if desired else list_field(ray, "env")
    item = find_named(env, names.PYTHONPATH_ENV)
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


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) <= {"name", "value"}:
        return repr(value.get("value"))
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
