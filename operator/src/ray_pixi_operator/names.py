"""Every label, annotation, env var, volume and path name the add-on uses, defined once.

The chart, the image, the plugin and the tests build against these names.
"""

from __future__ import annotations

# The package's version (hatch reads it from here): the plugin's, the chart's appVersion and the
# image tag's too, held equal by tests/unit/test_versions.py.
OPERATOR_VERSION = "0.2.0"
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
# The budget (GiB) the plugin keeps the store and pixi's package cache under on the volume;
# derived from an emptyDir's sizeLimit when absent.
DISK_BUDGET_GB_ANNOTATION = ANNOTATION_PREFIX + "disk-budget-gb"
# pixi's own configuration for the cluster's Ray nodes: a ConfigMap holding config.toml, and a
# Secret holding rattler's credentials file (both in the cluster's namespace).
PIXI_CONFIG_MAP_ANNOTATION = ANNOTATION_PREFIX + "pixi-config-configmap"
PIXI_AUTH_SECRET_ANNOTATION = ANNOTATION_PREFIX + "pixi-auth-secret"
# The Ray image's own ENV PYTHONPATH, declared by the user for an image whose Python ignores
# the user site (a venv): ray-pixi then sets PYTHONPATH to the payload plus this value.
IMAGE_PYTHONPATH_ANNOTATION = ANNOTATION_PREFIX + "image-pythonpath"
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
    DISK_BUDGET_GB_ANNOTATION,
    PIXI_CONFIG_MAP_ANNOTATION,
    PIXI_AUTH_SECRET_ANNOTATION,
    IMAGE_PYTHONPATH_ANNOTATION,
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
# The opt-in init container (before the payload's) that makes a hostPath directory kubelet
# created root-owned 0755 writable (mode 1777): root with no capabilities.
PREPARE_CONTAINER_NAME = "ray-pixi-prepare-volume"
PREPARE_VOLUME_COMMAND = ("ray-pixi-payload", "prepare-volume")
STORE_DIR = MOUNT_PATH + "/store"
PIXI_CACHE_DIR = MOUNT_PATH + "/pixi-cache"
# Every payload image's own directory, /ray-pixi/payloads/<key> (see payload_dir): pods of
# several payload versions and architectures share one volume, and nothing there is a pointer
# that one pod's installer could flip under another's feet.
PAYLOADS_DIR = MOUNT_PATH + "/payloads"
PAYLOAD_ADD_COMMAND = ("ray-pixi-payload", "add")
# Inside a payload directory (written by `ray-pixi-payload add`):
PAYLOAD_PIXI_LAUNCHER = "bin/pixi"  # runs <arch>/pixi for the node's architecture
PAYLOAD_PYTHON = "python"  # ray_pixi, pure Python, the same for every architecture
# ray-pixi 0.1.0 and 0.2.0 laid the payload out behind one symlink, /ray-pixi/payload. Only
# clusters prepared then still name these (their records keep them).
LEGACY_PAYLOAD_DIR = MOUNT_PATH + "/payload"
LEGACY_PIXI_EXE_PATH = LEGACY_PAYLOAD_DIR + "/bin/pixi"
LEGACY_PAYLOAD_PYTHON_DIR = LEGACY_PAYLOAD_DIR + "/python"
LEGACY_PAYLOAD_COMMAND = ("ray-pixi-payload", "install", LEGACY_PAYLOAD_DIR)
# The uid:gid of the add-on's image (images/Dockerfile); the init container runs as it when
# the Ray container's own user is root or unknown.
PAYLOAD_UID = 65532
# Where a cluster's pixi configuration is mounted in the Ray container (read-only).
PIXI_CONFIG_VOLUME = "ray-pixi-config"
PIXI_CONFIG_MOUNT = "/etc/ray-pixi/pixi-config"
PIXI_CONFIG_KEY = "config.toml"
PIXI_AUTH_VOLUME = "ray-pixi-auth"
PIXI_AUTH_MOUNT = "/etc/ray-pixi/pixi-auth"
PIXI_AUTH_KEY = "credentials.json"

# Env vars on the Ray container (containers[0]).
RUNTIME_ENV_PLUGINS_ENV = "RAY_RUNTIME_ENV_PLUGINS"
PLUGIN_CLASS = "ray_pixi.PixiPlugin"
PIXI_EXE_ENV = "RAY_PIXI_EXE"
STORE_DIR_ENV = "RAY_PIXI_STORE_DIR"
PIXI_CACHE_DIR_ENV = "PIXI_CACHE_DIR"
PLUGIN_CACHE_SIZE_GB_ENV = "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"
PIXI_VERSION_ENV = "RAY_PIXI_PIXI_VERSION"
PYTHONPATH_ENV = "PYTHONPATH"
# Python's user base: the payload's directory holds a user site per Python minor whose .pth
# adds the payload's python/ to sys.path, after the image's own PYTHONPATH (which stays).
PYTHONUSERBASE_ENV = "PYTHONUSERBASE"
PYTHONNOUSERSITE_ENV = "PYTHONNOUSERSITE"
DISK_BUDGET_GB_ENV = "RAY_PIXI_DISK_BUDGET_GB"
PIXI_CONFIG_FILE_ENV = "PIXI_CONFIG_FILE"
RATTLER_AUTH_FILE_ENV = "RATTLER_AUTH_FILE"

# --- KubeRay vocabulary ---
RAY_API_GROUP = "ray.io"
RAY_API_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"
RAYCLUSTER_KIND = "RayCluster"
RAYJOB_KIND = "RayJob"
RAYSERVICE_KIND = "RayService"
RAYCRONJOB_KIND = "RayCronJob"
RAYCRONJOB_PLURAL = "raycronjobs"
# Labels KubeRay puts on the pods it builds.
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
GROUP_LABEL = "ray.io/group"

# --- The webhook ---
# kopf serves a handler at "/<handler id>"; the MutatingWebhookConfiguration must use this path.
WEBHOOK_ID = "inject-raycluster"
WEBHOOK_PATH = "/" + WEBHOOK_ID


def payload_key(image: str) -> str:
    """The directory name of a payload image under PAYLOADS_DIR: its tag (or "digest") made
    path-safe, for people, and a digest of the whole reference, so that two references never
    share a directory."""
    import hashlib
    import re

    digest = hashlib.sha256(image.encode()).hexdigest()[:12]
    name = image.rsplit("/", 1)[-1]
    named, _, pinned = name.partition("@")
    tag = named.partition(":")[2] or ("digest" if pinned else "latest")
    readable = re.sub(r"[^A-Za-z0-9._-]", "-", tag)[:40].strip(".-") or "image"
    return f"{readable}-{digest}"


def payload_dir(image: str) -> str:
    """Where the init container of a pod prepared with `image` adds its payload."""
    return f"{PAYLOADS_DIR}/{payload_key(image)}"
