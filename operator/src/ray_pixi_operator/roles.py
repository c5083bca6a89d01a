"""The two roles, their kopf settings, and the registry each process builds explicitly.

The operator runs as two kinds of processes (the chart's two Deployments):

* the **webhook** (:mod:`.webhook`): admission only, no watches. Any number of replicas serve
  it side by side, since each request is answered on its own.
* the **reconciler** (:mod:`.reconciler`): watches opted-in RayClusters and Ray pods, repairs
  and reports. Exactly one runs: kopf's peering would freeze peers of equal priority rather
  than elect a leader, so the chart runs it as a single-replica Deployment that is stopped
  before its replacement starts.

``ray-pixi-operator run`` runs both in one process (development, small installs), as does
``kopf run -m ray_pixi_operator.handlers``. Importing this module registers nothing:
:func:`build_registry` makes a registry of the chosen roles. The decisions live in
:mod:`.admission`, :mod:`.mutation` and :mod:`.status`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import names
from . import reconciler as _reconciler
from . import webhook as _webhook
from .scope import settings_from
from .settings import Settings, SettingsError

logger = logging.getLogger(__name__)

__all__ = ["build_registry", "check_webhook_tls", "configure_kopf", "register", "startup"]

# The reconciler's kopf queueing: objects per LIST page, and how long an idle per-object
# worker lingers.
LIST_CHUNK = 50
WORKER_IDLE_SECONDS = 0.5


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


def configure_kopf(
    operator: kopf.OperatorSettings,
    settings: Settings,
    *,
    webhook: bool = True,
    reconciler: bool = True,
) -> None:
    """Point kopf at the add-on's settings for the roles this process runs."""
    from .tls import ReloadingWebhookServer

    if webhook:
        check_webhook_tls(settings)
        operator.admission.server = ReloadingWebhookServer(
            port=settings.webhook_port,
            host=settings.webhook_host,
            certfile=settings.webhook_cert_file,
            pkeyfile=settings.webhook_key_file,
            reload_interval=settings.webhook_cert_reload_seconds,
        )
        # The chart owns the MutatingWebhookConfiguration unless told to let kopf manage one.
        operator.admission.managed = settings.webhook_managed
    else:
        operator.admission.server = None
    if reconciler:
        # Server-side filters: only opted-in clusters and Ray pods reach the process at all.
        operator.watching.label_selectors[names.RAY_API_GROUP, names.RAYCLUSTER_PLURAL] = (
            f"{names.ENABLED_LABEL}={names.ENABLED_VALUE}"
        )
        operator.watching.label_selectors["", "pods"] = names.CLUSTER_LABEL
        # Memory that stays bounded as clusters grow: list in pages instead of one response of
        # every pod, and let a per-object worker go soon after its last event (a burst of pod
        # events otherwise holds a worker and a body per pod for seconds, and the process
        # keeps that peak). No worker limit: kopf's workers wait, holding their slot, until
        # every pod is indexed, so a limit below the pod count deadlocks the initial listing.
        # bench/operator-scale measures the effect.
        operator.watching.chunk_size = LIST_CHUNK
        operator.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Handlers' log lines stay in the log; the reconciler posts its own events.
    operator.posting.level = logging.WARNING
    # In namespaced mode the chart grants Roles only: kopf must not try to list
    # namespaces and CRDs cluster-wide (Forbidden, retried and logged) before it serves.
    operator.scanning.disabled = bool(settings.namespaces)


def startup(*, webhook: bool, reconciler: bool) -> Any:
    """kopf's startup hook for a process that runs the chosen roles."""

    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ray_pixi = settings_from(memo)
        configure_kopf(settings, ray_pixi, webhook=webhook, reconciler=reconciler)
        roles = " and ".join(
            role for role, on in (("webhook", webhook), ("reconciler", reconciler)) if on
        )
        logger.info(
            "ray-pixi-operator %s: %s; webhook port %d at path %s; payload image %s",
            names.OPERATOR_VERSION,
            roles,
            ray_pixi.webhook_port,
            names.WEBHOOK_PATH,
            ray_pixi.payload_image,
        )

    return configure


def build_registry(*, webhook: bool = True, reconciler: bool = True) -> kopf.OperatorRegistry:
    """A kopf registry with the handlers of the chosen roles and their startup hook."""
    registry = kopf.OperatorRegistry()
    # A registry of one's own has none of kopf's default login handlers. This one also sets up
    # the kubernetes client, which the reconciler's JSON patches use.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(startup(webhook=webhook, reconciler=reconciler))
    register(registry, webhook=webhook, reconciler=reconciler)
    return registry


def register(registry: kopf.OperatorRegistry, *, webhook: bool, reconciler: bool) -> None:
    """Add the chosen roles' handlers to ``registry``."""
    if webhook:
        _webhook.register(registry)
    if reconciler:
        _reconciler.register(registry)
