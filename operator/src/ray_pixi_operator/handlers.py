"""kopf wiring: startup settings, the mutating admission handler and the reconciler.

The decisions live in :mod:`.mutation` and :mod:`.status`; this module only moves data between
them and Kubernetes. Run it with ``ray-pixi-operator run`` (or ``kopf run -m
ray_pixi_operator.handlers``, which reads the same env vars).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from . import names
from .mutation import InjectionError, prepare
from .settings import Settings, SettingsError
from .status import ClusterStatus, build_cluster_status, needs_report

logger = logging.getLogger(__name__)

__all__ = [
    "MEMO_KEY",
    "check_webhook_tls",
    "configure",
    "configure_kopf",
    "inject_raycluster",
    "reconcile_raycluster",
]

# Where the operator's Settings live in kopf's memo (set by `run`, or read from env at startup).
MEMO_KEY = "ray_pixi_settings"
# Per-object memo key: the last status reported, so that events are not repeated.
_LAST_STATUS = "ray_pixi_last_status"

_RAYCLUSTERS = (names.RAY_API_GROUP, names.RAY_API_VERSION, names.RAYCLUSTER_PLURAL)
_OPTED_IN = {names.ENABLED_LABEL: names.ENABLED_VALUE}


def _settings(memo: Any) -> Settings:
    settings = memo.get(MEMO_KEY)
    if settings is None:  # `kopf run -m` without `ray-pixi-operator run`
        settings = memo[MEMO_KEY] = Settings.from_env(os.environ)
    return settings  # type: ignore[no-any-return]


def check_webhook_tls(settings: Settings) -> None:
    """Fail at startup, not on the first request, when kopf cannot make its own certificate."""
    if settings.webhook_cert_file is not None:
        return
    try:
        import certbuilder  # noqa: F401 -- kopf's self-signed certificates need it
    except ImportError:
        raise SettingsError(
            "Invalid RAY_PIXI_WEBHOOK_CERT_FILE='': unset, so kopf would make a self-signed "
            "certificate, which needs 'pip install ray-pixi-operator[dev]'; in a cluster, mount "
            "the webhook's TLS secret and set RAY_PIXI_WEBHOOK_CERT_FILE and "
            "RAY_PIXI_WEBHOOK_KEY_FILE"
        ) from None


def configure_kopf(operator: kopf.OperatorSettings, settings: Settings) -> None:
    """Point kopf's webhook server and event posting at the add-on's settings."""
    check_webhook_tls(settings)
    operator.admission.server = kopf.WebhookServer(
        port=settings.webhook_port,
        host=settings.webhook_host,
        certfile=settings.webhook_cert_file,
        pkeyfile=settings.webhook_key_file,
    )
    # The chart owns the MutatingWebhookConfiguration unless told to let kopf manage one.
    operator.admission.managed = settings.webhook_managed
    # Handlers' log lines stay in the log; the reconciler posts its own events.
    operator.posting.level = logging.WARNING
    # In namespaced mode the chart grants Roles only: kopf must not try to list
    # namespaces and CRDs cluster-wide (Forbidden, retried and logged) before it serves.
    operator.scanning.disabled = bool(settings.namespaces)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ray_pixi = _settings(memo)
    configure_kopf(settings, ray_pixi)
    logger.info(
        "ray-pixi webhook on port %d at path %s; payload image %s",
        ray_pixi.webhook_port,
        names.WEBHOOK_PATH,
        ray_pixi.payload_image,
    )


def _watched(settings: Settings, namespace: str | None) -> bool:
    return not settings.namespaces or namespace in settings.namespaces


@kopf.on.mutate(
    *_RAYCLUSTERS,
    id=names.WEBHOOK_ID,
    operations=["CREATE", "UPDATE"],
    labels=_OPTED_IN,
)
def inject_raycluster(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Inject at admission, so that KubeRay builds even the first head pod with it."""
    settings = _settings(memo)
    if not _watched(settings, body.metadata.namespace):
        return
    try:
        preparation = prepare(body, settings)
    except InjectionError as error:
        raise kopf.AdmissionError(f"ray-pixi: {error}", code=422) from None
    warnings.extend(f"ray-pixi: {kept}" for kept in preparation.kept)
    if preparation.changed:
        prepared_spec = preparation.body["spec"]

        def replace_spec(raw: Any) -> None:
            raw["spec"] = prepared_spec

        # kopf diffs the result into the JSONPatch it returns to the API server.
        patch.fns.append(replace_spec)


def _list_pods(namespace: str, cluster: str) -> list[Mapping[str, Any]]:
    import kubernetes  # configured by kopf's login (kubeconfig or in-cluster)

    api = kubernetes.client.CoreV1Api()
    pods = api.list_namespaced_pod(namespace, label_selector=f"{names.CLUSTER_LABEL}={cluster}")
    return [api.api_client.sanitize_for_serialization(pod) for pod in pods.items]


@kopf.on.event(*_RAYCLUSTERS, labels=_OPTED_IN)
async def reconcile_raycluster(
    type: str | None,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Report opted-in clusters that were not injected, or whose pods predate the injection."""
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    settings = _settings(memo)
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    try:
        pods = await asyncio.to_thread(_list_pods, namespace, name)
    except Exception as error:  # noqa: BLE001 -- report what we can without the pods
        logger.warning("ray-pixi cannot list the pods of RayCluster %s: %s", name, error)
        pods = []
    status = build_cluster_status(body, pods, settings)
    current = body.metadata.annotations.get(names.STATUS_ANNOTATION)
    if needs_report(status, stored=current, last_reported=memo.get(_LAST_STATUS)):
        _report(body, status)
    memo[_LAST_STATUS] = status
    # An invalid cluster cannot be patched while the webhook is up: it would reject the patch.
    if current != status.status and status.status != names.STATUS_INVALID:
        patch.metadata.annotations[names.STATUS_ANNOTATION] = status.status


def _report(body: kopf.Body, status: ClusterStatus) -> None:
    kopf.event(body, type=status.type, reason=status.reason, message=status.message)
    # The module logger, not kopf's per-object one: that one would post the line as a 2nd event.
    log = logger.warning if status.type == "Warning" else logger.info
    log(
        "RayCluster %s/%s: %s: %s",
        body.metadata.namespace,
        body.metadata.name,
        status.reason,
        status.message,
    )
