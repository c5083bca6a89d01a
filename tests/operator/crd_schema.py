"""Check manifests against the KubeRay v1.7.0 CRDs the way the API server would.

jsonschema checks types and required fields but ignores pruning: a structural CRD silently
drops every field its schema does not know. So besides :func:`validate`, :func:`unknown_fields`
walks an object against the schema and lists what the API server would prune, and
:func:`added_paths` lists what a mutation added so that each addition is checked too.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# On CI the clone has shared/ beside it, as /work/main and /work/shared are here.
CRD_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "kuberay" / "crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}

Path_ = tuple[Any, ...]


@functools.cache
def load_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of ``kind`` at ``version`` from the CRD file."""
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=yaml.CSafeLoader)
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise LookupError(f"{kind} CRD has no version {version}")


def validate(obj: dict[str, Any]) -> None:
    """Raise AssertionError listing every schema violation and every field that would be pruned."""
    schema = load_schema(obj["kind"], obj["apiVersion"].split("/")[1])
    problems = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft4Validator(schema).iter_errors(obj)
    ]
    problems += [
        f"{_dotted(path)}: not in the CRD schema (pruned)" for path in unknown_fields(obj, schema)
    ]
    if problems:
        raise AssertionError("invalid against the CRD schema:\n" + "\n".join(problems))


def unknown_fields(obj: Any, schema: dict[str, Any], path: Path_ = ()) -> list[Path_]:
    """Paths in ``obj`` that the schema does not declare, i.e. that the API server prunes."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ("metadata",):
        return []  # kept as is; the root metadata is ObjectMeta, checked by the API server
    found: list[Path_] = []
    if isinstance(obj, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in obj.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], (*path, key))
            elif isinstance(additional, dict):
                found += unknown_fields(value, additional, (*path, key))
            elif additional is not True:
                found.append((*path, key))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], (*path, index))
    return found


def schema_at(schema: dict[str, Any], path: Path_) -> dict[str, Any] | None:
    """The sub-schema for ``path`` (list indices step into ``items``), or None if undeclared."""
    node: dict[str, Any] | None = schema
    for step in path:
        if node is None:
            return None
        if isinstance(step, int):
            node = node.get("items")
        elif step in (node.get("properties") or {}):
            node = node["properties"][step]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def added_paths(before: Any, after: Any, path: Path_ = ()) -> list[Path_]:
    """Paths present in ``after`` but not in ``before``; list items of a name match by name."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[Path_] = []
        for key, value in after.items():
            if key not in before:
                found.append((*path, key))
            else:
                found += added_paths(before[key], value, (*path, key))
        return found
    if isinstance(before, list) and isinstance(after, list):
        found = []
        by_name = {_key(item): item for item in before if _key(item) is not None}
        for index, item in enumerate(after):
            key = _key(item)
            if key is not None:
                if key in by_name:
                    found += added_paths(by_name[key], item, (*path, index))
                else:
                    found.append((*path, index))
            elif index >= len(before):
                found.append((*path, index))
            else:
                found += added_paths(before[index], item, (*path, index))
        return found
    return []


def assert_additions_in_schema(before: dict[str, Any], after: dict[str, Any]) -> list[Path_]:
    """Every field ``after`` adds to ``before`` is declared in the CRD schema; returns them."""
    schema = load_schema(after["kind"], after["apiVersion"].split("/")[1])
    problems = []
    added = added_paths(before, after)
    for path in added:
        if path[:1] == ("metadata",):
            continue  # the root metadata is ObjectMeta: the API server keeps annotations
        sub = schema_at(schema, path)
        if sub is None:
            problems.append(f"{_dotted(path)}: added but not in the CRD schema")
            continue
        value = _get(after, path)
        problems += [
            f"{_dotted(path + inner)}: added but not in the CRD schema"
            for inner in unknown_fields(value, sub)
        ]
    if problems:
        raise AssertionError(
            "the mutation adds fields the API server would prune:\n" + "\n".join(problems)
        )
    return added


def _key(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("name", item.get("mountPath"))
    return None


def _get(obj: Any, path: Path_) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _dotted(path: Path_) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(
        "."
    )
