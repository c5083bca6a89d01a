"""Every label, annotation, env var, volume and path name the add-on uses, defined once.

The chart, the image, the plugin and the tests build against these names.
"""

from __future__ import annotations

import importlib.metadata

try:
    OPERATOR_VERSION = importlib.metadata.version("ray-pixi-operator")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    OPERATOR_VERSION = "unknown"
# Who prepared a cluster, as its injection record says.
PREPARED_BY = f"ray-pixi-operator {OPERATOR_VERSION}"

# --- Opt-in ---
# On a RayCluster, or on the RayJob / RayService whose labels KubeRay copies onto its RayCluster.
ENABLED_LABEL = "ray-pixi.io/enabled"
ENABLED_VALUE = "true"

# --- Per-cluster overrides (metadata.annotations of the RayCluster / RayJob / RayService) -------
ANNOTATION_PREFIX = "ray-pixi.io/"
PIXI_VERSION_ANNOTATION = ANNOTATION_PREFIX + "pixi-version"
CACHE_VOLUME_ANNOTATION = ANNOTATION_PREFIX + "cache-volume"
CACHE_SIZE_LIMIT_ANNOTATION = ANNOTATION_PREFIX + "cache-size-limit"
CACHE_HOST_PATH_ANNOTATION = ANNOTATION_PREFIX + "cache-host-path"
CACHE_PVC_NAME_ANNOTATION = ANNOTATION_PREFIX + "cache-pvc-name"
PLUGIN_CACHE_SIZE_GB_ANNOTATION = ANNOTATION_PREFIX + "plugin-cache-size-gb"
# The Ray version the cluster's image really runs, vouched for by whoever sets it: the
# compatibility gate reads it instead of spec.rayVersion (absent or stale in some manifests).
RAY_VERSION_ANNOTATION = ANNOTATION_PREFIX + "ray-version"
# Set (to any new value) to move an existing cluster to the operator's current settings: the
# webhook prepares it again once per distinct value and records the value.
MIGRATE_ANNOTATION = ANNOTATION_PREFIX + "migrate"
# Written by the webhook on the RayCluster's metadata: the injection record, as JSON values (what
# was injected and with which settings). Metadata, not spec, so it is outside KubeRay's spec hash.
INJECTION_ANNOTATION = ANNOTATION_PREFIX + "injection"
# Written by the reconciler on the RayCluster: one of the STATUS_* values below, and the
# reasons of the events it last posted about the cluster (comma-separated), so that a
# restarted reconciler posts again only what changed.
STATUS_ANNOTATION = ANNOTATION_PREFIX + "status"
REPORTED_ANNOTATION = ANNOTATION_PREFIX + "reported"
# The reconciler's own annotations: writing them never needs the webhook.
RECONCILER_ANNOTATIONS = (STATUS_ANNOTATION, REPORTED_ANNOTATION)
# Written by ray-pixi-operator 0.1.0 on each pod template (KubeRay copies it onto every pod):
# digests of what 0.1.0 owned there. Read only to adopt such clusters; never written now.
LEGACY_TEMPLATE_ANNOTATION = ANNOTATION_PREFIX + "injected"

OVERRIDE_ANNOTATIONS = (
    PIXI_VERSION_ANNOTATION,
    CACHE_VOLUME_ANNOTATION,
    CACHE_SIZE_LIMIT_ANNOTATION,
    CACHE_HOST_PATH_ANNOTATION,
    CACHE_PVC_NAME_ANNOTATION,
    PLUGIN_CACHE_SIZE_GB_ANNOTATION,
)
# What users set on a cluster (or its RayJob / RayService).
USER_ANNOTATIONS = (*OVERRIDE_ANNOTATIONS, RAY_VERSION_ANNOTATION, MIGRATE_ANNOTATION)
KNOWN_ANNOTATIONS = (
    *USER_ANNOTATIONS,
    INJECTION_ANNOTATION,
    *RECONCILER_ANNOTATIONS,
    LEGACY_TEMPLATE_ANNOTATION,
)

# Values of STATUS_ANNOTATION.
STATUS_INJECTED = "injected"
STATUS_NOT_INJECTED = "not-injected"
STATUS_INVALID = "invalid"

# --- What lands in the pod templates ---
VOLUME_NAME = "ray-pixi"
MOUNT_PATH = "/ray-pixi"
INIT_CONTAINER_NAME = "ray-pixi-payload"
PAYLOAD_DIR = MOUNT_PATH + "/payload"
PIXI_EXE_PATH = PAYLOAD_DIR + "/bin/pixi"
PAYLOAD_PYTHON_DIR = PAYLOAD_DIR + "/python"
STORE_DIR = MOUNT_PATH + "/store"
PIXI_CACHE_DIR = MOUNT_PATH + "/pixi-cache"
PAYLOAD_COMMAND = ("ray-pixi-payload", "install", PAYLOAD_DIR)

# Env vars on the Ray container (containers[0]).
RUNTIME_ENV_PLUGINS_ENV = "RAY_RUNTIME_ENV_PLUGINS"
PLUGIN_CLASS = "ray_pixi.PixiPlugin"
PIXI_EXE_ENV = "RAY_PIXI_EXE"
STORE_DIR_ENV = "RAY_PIXI_STORE_DIR"
PIXI_CACHE_DIR_ENV = "PIXI_CACHE_DIR"
PLUGIN_CACHE_SIZE_GB_ENV = "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"
PIXI_VERSION_ENV = "RAY_PIXI_PIXI_VERSION"
PYTHONPATH_ENV = "PYTHONPATH"

# --- KubeRay vocabulary ---
RAY_API_GROUP = "ray.io"
RAY_API_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"
RAYCLUSTER_KIND = "RayCluster"
RAYJOB_KIND = "RayJob"
RAYSERVICE_KIND = "RayService"
# Labels KubeRay puts on the pods it builds.
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
GROUP_LABEL = "ray.io/group"

# --- The webhook ---
# kopf serves a handler at "/<handler id>"; the MutatingWebhookConfiguration must use this path.
WEBHOOK_ID = "inject-raycluster"
WEBHOOK_PATH = "/" + WEBHOOK_ID
