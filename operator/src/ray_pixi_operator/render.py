"""Offline mutation for clusters that cannot run webhooks (GitOps pipelines, policy engines).

Reads RayCluster / RayJob / RayService / RayCronJob YAML (one or many documents, such as
``kustomize build`` output) and returns the same documents prepared exactly as the webhook
would; objects without the label, of any kind, come out unchanged. A labelled object of a kind
ray-pixi cannot prepare is an error, since its author expected it prepared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from . import names
from .errors import InjectionError
from .mutation import prepare
from .settings import Settings
from .templates import cluster_spec_path, is_opted_in

__all__ = ["RenderError", "Rendered", "render"]


class RenderError(ValueError):
    """The input cannot be rendered; the message names the document (counting from 1)."""


@dataclass(frozen=True)
class Rendered:
    text: str
    notes: tuple[str, ...]


def render(text: str, settings: Settings, source: str = "<stdin>") -> Rendered:
    """Prepare every document of a YAML stream; notes report user values that were kept."""
    documents = _load(text, source)
    prepared: list[Any] = []
    notes: list[str] = []
    for number, document in enumerate(documents, start=1):
        if document is None:  # an empty document, e.g. a leading '---'
            continue
        where = f"{source}: document {number}"
        if not isinstance(document, dict):
            raise RenderError(
                f"{where}: expected a Kubernetes object (a mapping with apiVersion and kind), "
                f"got a {type(document).__name__}"
            )
        described = f"{where} ({document.get('kind')} {_name(document)!r})"
        try:
            _check_label(document)
            if not _is_ray_kind(document) and not is_opted_in(document):
                prepared.append(document)  # a ConfigMap, Service... beside the cluster
                continue
            cluster_spec_path(document)  # an opted-in object of another kind: say why not
            preparation = prepare(document, settings)
        except InjectionError as error:
            raise RenderError(f"{described}: {error}") from None
        notes.extend(f"{described}: {kept}" for kept in preparation.kept)
        prepared.append(preparation.body)
    output = yaml.dump_all(prepared, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return Rendered(text=output if prepared else "", notes=tuple(notes))


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Writes multi-line strings (serveConfigV2, runtimeEnvYAML) as readable blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # PyYAML falls back to a quoted style where a block cannot hold the string exactly.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _load(text: str, source: str) -> list[Any]:
    documents: list[Any] = []
    try:
        for document in yaml.safe_load_all(text):
            documents.append(document)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RenderError(
            f"{source}: document {len(documents) + 1}: invalid YAML: {problem}{at}"
        ) from None
    return documents


def _is_ray_kind(document: dict[str, Any]) -> bool:
    try:
        cluster_spec_path(document)
    except InjectionError:
        return False
    return True


def _check_label(document: dict[str, Any]) -> None:
    """The API server would refuse a non-string label; say so instead of skipping the object."""
    labels = (document.get("metadata") or {}).get("labels") or {}
    value = labels.get(names.ENABLED_LABEL)
    if value is not None and not isinstance(value, str):
        raise InjectionError(
            f"metadata.labels[{names.ENABLED_LABEL!r}] must be the string "
            f'"{names.ENABLED_VALUE}", got {value!r}: quote it'
        )


def _name(document: dict[str, Any]) -> str:
    return str((document.get("metadata") or {}).get("name", ""))
