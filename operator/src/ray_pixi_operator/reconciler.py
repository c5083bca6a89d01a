"""The reconciler: kopf watches in, :func:`.status.reconcile` decides, patches and events out.

It sees only opted-in RayClusters and Ray pods (server-side label selectors, see
:func:`.roles.configure_kopf`). Pods land in a kopf index (a few strings per pod, grouped by
cluster), so a RayCluster event reads its pods from memory: no pod LIST per event, whatever
the cluster's size. A repair is one JSON patch guarded by the cluster's resourceVersion (a
``test`` op first), never a merge patch: a merge patch replaces whole lists, and the cluster
may have changed since it was read. The status annotation is written with a merge patch of
that one key, which touches no list and no template, so the API server does not even call
the webhook for it (the chart's ``matchConditions``); nor does ``ray-pixi.io/reported``, the
reasons of the events last posted, which a restarted reconciler compares with before posting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import jsonpatch
import kopf

from . import names
from .scope import OPTED_IN, RAYCLUSTERS, settings_from
from .status import ClusterReport, PodSummary, needs_report, reconcile, summarize_pod

__all__ = ["POD_INDEX", "index_ray_pod", "reconcile_raycluster", "register"]

logger = logging.getLogger(__name__)

# The kwarg kopf passes the pod index under (the index handler's id).
POD_INDEX = "ray_pods"
# Per-object memo keys.
_LAST_REPORT = "ray_pixi_last_report"
_LAST_RECORD = "ray_pixi_last_record"


def index_ray_pod(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodSummary]:
    """(namespace, cluster) -> what the reconciler needs of each of the cluster's pods."""
    return {(str(namespace), labels[names.CLUSTER_LABEL]): summarize_pod(body)}


async def reconcile_raycluster(
    type: str | None,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Repair what a template lost, adopt 0.1.0 clusters, and report: on every cluster event."""
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    settings = settings_from(memo)
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    index = kwargs.get(POD_INDEX)
    pods: Iterable[PodSummary] = index.get((namespace, name), []) if index is not None else []
    outcome = reconcile(dict(body), pods, settings, remembered=memo.get(_LAST_RECORD))
    if outcome.record is not None:
        memo[_LAST_RECORD] = outcome.record
    if outcome.repair is not None:
        repaired = await asyncio.to_thread(_json_patch, dict(body), outcome.repair)
        if not repaired:
            return  # the cluster changed meanwhile: its next event brings the fresh version
    report = outcome.report
    annotations = body.metadata.annotations
    stored = annotations.get(names.STATUS_ANNOTATION)
    stored_reasons = annotations.get(names.REPORTED_ANNOTATION)
    last = memo.get(_LAST_REPORT)
    if needs_report(report, stored=stored, stored_reasons=stored_reasons, last_reported=last):
        _post(body, report)
    memo[_LAST_REPORT] = report
    # A merge patch of two annotations: no list, no template, so no webhook call either.
    if stored != report.status:
        patch.metadata.annotations[names.STATUS_ANNOTATION] = report.status
    if stored_reasons != report.reasons:
        patch.metadata.annotations[names.REPORTED_ANNOTATION] = report.reasons


def _json_patch(stored: dict[str, Any], repaired: dict[str, Any]) -> bool:
    """PATCH the cluster from ``stored`` to ``repaired``; False if it is no longer ``stored``."""
    import kubernetes  # configured by kopf's login (kubeconfig or in-cluster)

    metadata = stored["metadata"]
    operations = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": metadata["resourceVersion"]},
        *jsonpatch.make_patch(stored, repaired).patch,
    ]
    api = kubernetes.client.CustomObjectsApi()
    try:
        api.patch_namespaced_custom_object(
            names.RAY_API_GROUP,
            names.RAY_API_VERSION,
            metadata["namespace"],
            names.RAYCLUSTER_PLURAL,
            metadata["name"],
            operations,
            _content_type="application/json-patch+json",
        )
    except kubernetes.client.ApiException as error:
        if error.status in (409, 422):  # the test op failed: changed since it was read
            logger.info(
                "RayCluster %s/%s changed before its repair; retrying on its next event",
                metadata["namespace"],
                metadata["name"],
            )
            return False
        raise
    logger.info(
        "Repaired RayCluster %s/%s from its injection record",
        metadata["namespace"],
        metadata["name"],
    )
    return True


def _post(body: kopf.Body, report: ClusterReport) -> None:
    for event in report.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        # The module logger, not kopf's per-object one: that one would post a 2nd event.
        log = logger.warning if event.type == "Warning" else logger.info
        log(
            "RayCluster %s/%s: %s: %s",
            body.metadata.namespace,
            body.metadata.name,
            event.reason,
            event.message,
        )


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.index(
        "",
        "v1",
        "pods",
        id=POD_INDEX,
        labels={names.CLUSTER_LABEL: kopf.PRESENT},
        registry=registry,
    )(index_ray_pod)
    kopf.on.event(*RAYCLUSTERS, labels=OPTED_IN, registry=registry)(reconcile_raycluster)
