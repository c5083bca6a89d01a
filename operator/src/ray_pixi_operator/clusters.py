"""``ray-pixi-operator clusters``: list opted-in clusters by payload, and migrate them.

Listing reads each cluster's injection record. Migrating is the explicit, documented way to
move a cluster to the operator's current settings: it sets ``ray-pixi.io/migrate`` to a new
value with a merge patch of that one annotation (no list, no template), and the webhook, which
holds the current settings, prepares the cluster again. With ``upgradeStrategy: Recreate``
KubeRay then recreates the cluster's pods; otherwise pods built afterwards get the new payload.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import names
from .admission import resolve_record

__all__ = ["ClusterRow", "format_table", "migration_token", "summarize"]


@dataclass(frozen=True)
class ClusterRow:
    namespace: str
    name: str
    payload_image: str
    pixi_version: str
    prepared_by: str
    status: str
    migration: str


def summarize(body: Mapping[str, Any]) -> ClusterRow:
    """One line of ``clusters list``: what the cluster's record (or its absence) says."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    record, problem = resolve_record(body, None)
    if record is None:
        image = "(unreadable record)" if problem else "(not prepared)"
        return ClusterRow(
            str(metadata.get("namespace", "")),
            str(metadata.get("name", "")),
            image,
            "-",
            "-",
            str(annotations.get(names.STATUS_ANNOTATION, "-")),
            "-",
        )
    prepared_by = record.prepared_by + (" (adopted)" if record.adopted else "")
    return ClusterRow(
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
        record.payload_image or "-",
        record.pixi_version or "(payload's)",
        prepared_by,
        str(annotations.get(names.STATUS_ANNOTATION, "-")),
        record.migration or "-",
    )


def format_table(rows: Iterable[ClusterRow]) -> str:
    header = ClusterRow(
        "NAMESPACE", "NAME", "PAYLOAD IMAGE", "PIXI", "PREPARED BY", "STATUS", "MIGRATION"
    )
    table = [header, *sorted(rows, key=lambda r: (r.payload_image, r.namespace, r.name))]
    columns = list(zip(*(_cells(row) for row in table), strict=True))
    widths = [max(len(cell) for cell in column) for column in columns]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(_cells(row), widths, strict=True)
        ).rstrip()
        for row in table
    )


def _cells(row: ClusterRow) -> tuple[str, ...]:
    return (
        row.namespace,
        row.name,
        row.payload_image,
        row.pixi_version,
        row.prepared_by,
        row.status,
        row.migration,
    )


def migration_token(now: datetime.datetime | None = None) -> str:
    """A new ``ray-pixi.io/migrate`` value: the UTC time, to the second."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- The commands (API calls; the CLI wires them) ---


def _api() -> Any:
    import kubernetes

    config: Any = kubernetes.config  # untyped
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return kubernetes.client.CustomObjectsApi()


def _list(api: Any, namespace: str | None) -> list[dict[str, Any]]:
    selector = f"{names.ENABLED_LABEL}={names.ENABLED_VALUE}"
    args = (names.RAY_API_GROUP, names.RAY_API_VERSION)
    if namespace is None:
        answer = api.list_cluster_custom_object(
            *args, names.RAYCLUSTER_PLURAL, label_selector=selector
        )
    else:
        answer = api.list_namespaced_custom_object(
            *args, namespace, names.RAYCLUSTER_PLURAL, label_selector=selector
        )
    return list(answer.get("items", []))


def list_clusters(namespace: str | None) -> str:
    return format_table(summarize(body) for body in _list(_api(), namespace))


def migrate_clusters(
    namespace: str | None,
    cluster_names: Sequence[str],
    *,
    every: bool,
    from_image: str | None,
    dry_run: bool,
    token: str | None = None,
) -> tuple[str, int]:
    """Set ``ray-pixi.io/migrate`` on the chosen clusters; the report and the exit code."""
    api = _api()
    bodies = _list(api, namespace)
    chosen = [
        body
        for body in bodies
        if (every or body["metadata"]["name"] in cluster_names)
        and (from_image is None or summarize(body).payload_image == from_image)
    ]
    missing = sorted(set(cluster_names) - {body["metadata"]["name"] for body in bodies})
    lines = [f"no opted-in RayCluster named {name!r} here" for name in missing]
    token = token or migration_token()
    failed = bool(missing)
    for body in chosen:
        meta = body["metadata"]
        before = summarize(body)
        where = f"{meta['namespace']}/{meta['name']}"
        if dry_run:
            lines.append(f"{where}: would migrate from {before.payload_image}")
            continue
        after_body = api.patch_namespaced_custom_object(
            names.RAY_API_GROUP,
            names.RAY_API_VERSION,
            meta["namespace"],
            names.RAYCLUSTER_PLURAL,
            meta["name"],
            {"metadata": {"annotations": {names.MIGRATE_ANNOTATION: token}}},
        )
        after = summarize(after_body)
        if after.migration == token:
            lines.append(f"{where}: migrated from {before.payload_image} to {after.payload_image}")
        else:
            failed = True
            lines.append(
                f"{where}: annotated {names.MIGRATE_ANNOTATION}={token}, but the webhook did not "
                "prepare it again: is the ray-pixi webhook running and serving this namespace?"
            )
    if not chosen and not missing:
        lines.append("no cluster matched")
    return "\n".join(lines), 1 if failed else 0
