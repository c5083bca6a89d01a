"""The injection record: what the add-on put into a cluster's pod templates, as values.

It lives in the RayCluster's ``metadata.annotations['ray-pixi.io/injection']``. Metadata, not
spec: KubeRay's ``upgradeStrategy: Recreate`` deletes every pod when a hash of ``.spec`` changes
(``GenerateHashWithoutReplicasAndWorkersToDelete`` in ray-operator v1.6.2 and v1.7.0), and a
RayService compares a hash of its ``rayClusterConfig``; neither reads the cluster's annotations.

The record holds the exact items injected (volumes, init containers, mounts, env vars, merged
values), so an UPDATE that lost some of them (a RayService replaces its cluster's whole spec and
annotations; a merge patch replaces a list) gets exactly those back, whatever the operator's
settings are now. It also holds the settings they were built from, for people and for
``ray-pixi-operator clusters list``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import names

__all__ = [
    "FORMAT",
    "Injection",
    "Record",
    "RecordError",
    "read_record",
    "template_key",
]

Body = dict[str, Any]

# Bumped when the record's meaning changes; a reader refuses formats it does not know.
FORMAT = 1


class RecordError(ValueError):
    """An injection record that cannot be read; the message says where and what to do."""


def template_key(group: str | None) -> str:
    """The record's name for a pod template: the head's, or a worker group's by groupName."""
    return "headGroupSpec" if group is None else f"workerGroupSpecs[{group}]"


@dataclass(frozen=True)
class Injection:
    """What the add-on adds to one pod template, item by item, in the order it adds them.

    Lists are keyed like Kubernetes keys them: volumes, init containers and env vars by name,
    mounts by mountPath. ``runtime_env_plugins`` are entries merged into the Ray container's
    ``RAY_RUNTIME_ENV_PLUGINS`` list, ``python_path`` directories prepended to its
    ``PYTHONPATH``; ``annotations`` go on the template's metadata; ``image_pull_secrets`` (by
    name) on the pod spec, for the payload image.
    """

    volumes: tuple[Body, ...] = ()
    volume_mounts: tuple[Body, ...] = ()
    init_containers: tuple[Body, ...] = ()
    runtime_env_plugins: tuple[Body, ...] = ()
    env: tuple[Body, ...] = ()
    python_path: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[Body, ...] = ()

    def to_json(self, *, empty: bool = False) -> Body:
        """The record's JSON; kinds with nothing in them are left out unless ``empty``."""
        data = {_JSON_KEYS[f.name]: _plain(getattr(self, f.name)) for f in fields(self)}
        return data if empty else {key: value for key, value in data.items() if value}

    def differences(self, base: Injection) -> Body:
        """The JSON of only the kinds that differ from ``base`` (a template's override)."""
        mine, theirs = self.to_json(empty=True), base.to_json(empty=True)
        return {key: value for key, value in mine.items() if value != theirs[key]}

    @classmethod
    def from_json(cls, data: Any, where: str, base: Injection | None = None) -> Injection:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be an object, got {_kind(data)}")
        unknown = sorted(set(data) - set(_JSON_KEYS.values()))
        if unknown:
            raise RecordError(f"{where} has unknown key {unknown[0]!r}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = _JSON_KEYS[f.name]
            if key not in data:
                continue
            raw = data[key]
            if f.name == "python_path":
                if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
                    raise RecordError(f"{where}.{key} must be a list of directories")
                values[f.name] = tuple(raw)
            elif f.name == "annotations":
                if not isinstance(raw, Mapping) or not all(
                    isinstance(v, str) for v in raw.values()
                ):
                    raise RecordError(f"{where}.{key} must map annotation names to strings")
                values[f.name] = dict(raw)
            else:
                if not isinstance(raw, list) or not all(isinstance(i, Mapping) for i in raw):
                    raise RecordError(f"{where}.{key} must be a list of objects")
                values[f.name] = tuple(copy.deepcopy(dict(item)) for item in raw)
        return replace(base, **values) if base is not None else cls(**values)


_JSON_KEYS = {
    "volumes": "volumes",
    "volume_mounts": "volumeMounts",
    "init_containers": "initContainers",
    "runtime_env_plugins": "runtimeEnvPlugins",
    "env": "env",
    "python_path": "pythonPath",
    "annotations": "annotations",
    "image_pull_secrets": "imagePullSecrets",
}


@dataclass(frozen=True)
class Record:
    """What one cluster was prepared with.

    ``injection`` is what a pod template gets; ``templates`` names the templates prepared and,
    for those whose injection differs (the init container runs as the Ray container's user, for
    one), holds theirs. ``settings`` are the values it was built from (payload image, pixi
    version, cache volume, ...). ``migration`` is the last ``ray-pixi.io/migrate`` value
    honoured; ``adopted`` marks a record read back from a cluster ray-pixi 0.1.0 prepared.
    """

    settings: Mapping[str, Any]
    injection: Injection
    templates: Mapping[str, Injection | None] = field(default_factory=dict)
    prepared_by: str = ""
    migration: str | None = None
    adopted: bool = False

    def injection_for(self, key: str) -> Injection | None:
        """The recorded injection of a template, or None for a template the record never saw."""
        if key not in self.templates:
            return None
        return self.templates[key] or self.injection

    @property
    def payload_image(self) -> str | None:
        image = self.settings.get("payloadImage")
        if image:
            return str(image)
        for init in self.injection.init_containers:
            if init.get("name") == names.INIT_CONTAINER_NAME:
                return str(init.get("image"))
        return None

    @property
    def pixi_version(self) -> str | None:
        version = self.settings.get("pixiVersion")
        return str(version) if version else None

    def to_json(self) -> Body:
        data: Body = {
            "format": FORMAT,
            "preparedBy": self.prepared_by,
            "settings": dict(self.settings),
            "inject": self.injection.to_json(),
            "templates": {
                key: (injection.differences(self.injection) if injection is not None else {})
                for key, injection in sorted(self.templates.items())
            },
        }
        if self.migration is not None:
            data["migration"] = self.migration
        if self.adopted:
            data["adopted"] = True
        return data

    def dumps(self) -> str:
        """The annotation's value: compact, stable JSON (equal records give equal text)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def build(
        cls,
        settings: Mapping[str, Any],
        per_template: Mapping[str, Injection],
        base: Injection,
        *,
        prepared_by: str,
        migration: str | None = None,
        adopted: bool = False,
    ) -> Record:
        """A record of ``per_template`` injections; those equal to ``base`` are stored once."""
        return cls(
            settings=dict(settings),
            injection=base,
            templates={k: (v if v != base else None) for k, v in per_template.items()},
            prepared_by=prepared_by,
            migration=migration,
            adopted=adopted,
        )

    @classmethod
    def loads(cls, text: str, where: str = f"annotation {names.INJECTION_ANNOTATION}") -> Record:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise RecordError(f"{where} is not JSON ({error})") from None
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be a JSON object, got {_kind(data)}")
        if data.get("format") != FORMAT:
            raise RecordError(
                f"{where} has format {data.get('format')!r}; this operator reads format {FORMAT} "
                "(was it written by a newer ray-pixi-operator?)"
            )
        settings = data.get("settings")
        if not isinstance(settings, Mapping):
            raise RecordError(f"{where}.settings must be an object")
        base = Injection.from_json(data.get("inject"), f"{where}.inject")
        overrides = data.get("templates")
        if not isinstance(overrides, Mapping):
            raise RecordError(f"{where}.templates must map template names to objects")
        templates: dict[str, Injection | None] = {}
        for key, value in overrides.items():
            override = Injection.from_json(value, f"{where}.templates[{key!r}]", base=base)
            templates[str(key)] = override if override != base else None
        migration = data.get("migration")
        return cls(
            settings=dict(settings),
            injection=base,
            templates=templates,
            prepared_by=str(data.get("preparedBy", "")),
            migration=None if migration is None else str(migration),
            adopted=bool(data.get("adopted", False)),
        )


def read_record(annotations: Mapping[str, Any]) -> Record | None:
    """The record in a cluster's annotations; None when there is none."""
    raw = annotations.get(names.INJECTION_ANNOTATION)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RecordError(f"annotation {names.INJECTION_ANNOTATION} must be a string")
    return Record.loads(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [copy.deepcopy(item) for item in value]
    if isinstance(value, Mapping):
        return dict(sorted(value.items()))
    return value


def _kind(value: Any) -> str:
    return type(value).__name__
