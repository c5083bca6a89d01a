"""What the add-on puts into one pod template: the volumes and mounts, the init containers
that install the payload, and the Ray container's env. Pure builders of Kubernetes items."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import names
from .options import ClusterOptions
from .record import Injection
from .templates import list_field, walk_templates

__all__ = [
    "INIT_CONTAINER_RESOURCES",
    "build_config_volumes",
    "build_env",
    "build_for_new_template",
    "build_init_containers",
    "build_injection",
    "build_mounts",
    "build_volume",
    "carries_injection",
    "installer_image",
    "python_path_mechanism",
    "ray_identity",
]

Body = dict[str, Any]


# Resources of the init containers by default (RAY_PIXI_INIT_CONTAINER_CPU and _MEMORY, the
# chart's injection.initContainerCPU and initContainerMemory, change them): what KubeRay gives
# its own wait-gcs-ready, requests equal to limits. A pod's init phase requests the largest
# init container's, so on worker pods (which have wait-gcs-ready) this adds nothing to what
# the pod asks the scheduler for; a Guaranteed pod stays Guaranteed; a namespace quota on
# limits.cpu or limits.memory admits the pod.
INIT_CONTAINER_RESOURCES = {
    "requests": {"cpu": "200m", "memory": "256Mi"},
    "limits": {"cpu": "200m", "memory": "256Mi"},
}


def _init_resources(options: ClusterOptions) -> Body:
    """Requests equal to limits, as the settings say."""
    amounts = {"cpu": options.init_container_cpu, "memory": options.init_container_memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def build_volume(options: ClusterOptions) -> Body:
    if options.cache_volume == "hostPath":
        return {
            "name": names.VOLUME_NAME,
            "hostPath": {"path": options.cache_host_path, "type": "DirectoryOrCreate"},
        }
    if options.cache_volume == "persistentVolumeClaim":
        return {
            "name": names.VOLUME_NAME,
            "persistentVolumeClaim": {"claimName": options.cache_pvc_name},
        }
    empty_dir = {"sizeLimit": options.cache_size_limit} if options.cache_size_limit else {}
    return {"name": names.VOLUME_NAME, "emptyDir": empty_dir}


def build_config_volumes(options: ClusterOptions) -> list[Body]:
    """pixi's configuration (a ConfigMap) and channel credentials (a Secret), read-only."""
    volumes = []
    if options.pixi_config_map:
        volumes.append(
            {
                "name": names.PIXI_CONFIG_VOLUME,
                "configMap": {"name": options.pixi_config_map, "defaultMode": 0o444},
            }
        )
    if options.pixi_auth_secret:
        volumes.append(
            {
                "name": names.PIXI_AUTH_VOLUME,
                "secret": {"secretName": options.pixi_auth_secret, "defaultMode": 0o444},
            }
        )
    return volumes


def build_mounts(options: ClusterOptions) -> list[Body]:
    """The Ray container's mounts: the volume, and the pixi configuration when there is one."""
    mounts: list[Body] = [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}]
    if options.pixi_config_map:
        mounts.append(
            {"name": names.PIXI_CONFIG_VOLUME, "mountPath": names.PIXI_CONFIG_MOUNT,
             "readOnly": True}
        )  # fmt: skip
    if options.pixi_auth_secret:
        mounts.append(
            {"name": names.PIXI_AUTH_VOLUME, "mountPath": names.PIXI_AUTH_MOUNT, "readOnly": True}
        )
    return mounts


def _restricted(run_as_user: int, run_as_group: int | None = None) -> Body:
    """A container securityContext that the "restricted" Pod Security level admits."""
    security: Body = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_group is not None:
        security["runAsGroup"] = run_as_group
    return security


def ray_identity(pod: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The uid and gid the Ray container runs as, where the pod says so: its own
    securityContext first, then the pod's (None: the image's USER decides)."""
    ray = ((pod.get("containers") or [{}])[0]) or {}
    container = ray.get("securityContext") or {}
    pod_level = pod.get("securityContext") or {}

    def pick(key: str) -> int | None:
        for source in (container, pod_level):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return pick("runAsUser"), pick("runAsGroup")


def build_init_containers(options: ClusterOptions, pod: Mapping[str, Any]) -> list[Body]:
    """The init containers: the opt-in hostPath preparation, then the payload installer.

    The installer runs as the Ray container's user when the pod names a non-root one (so what
    it creates belongs to the user that writes it), else as the image's uid: never as root,
    whatever the pod's own securityContext says. Requests equal limits, as for KubeRay's own
    wait-gcs-ready, so a Guaranteed pod stays Guaranteed and a limits quota admits it.
    """
    uid, gid = ray_identity(pod)
    if uid is None or uid == 0:
        uid, gid = names.PAYLOAD_UID, names.PAYLOAD_UID
    common: Body = {
        "image": options.payload_image,
        "imagePullPolicy": options.payload_image_pull_policy,
        "resources": _init_resources(options),
        "volumeMounts": [{"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH}],
    }
    inits = []
    if options.cache_host_path_prepare:
        inits.append(
            {
                "name": names.PREPARE_CONTAINER_NAME,
                **copy.deepcopy(common),
                "command": [*names.PREPARE_VOLUME_COMMAND, names.MOUNT_PATH],
                # Root, but with no capability at all: it can change only what root owns (the
                # directory kubelet created), nothing it does not own.
                "securityContext": {**_restricted(0, 0), "runAsNonRoot": False},
            }
        )
    inits.append(
        {
            "name": names.INIT_CONTAINER_NAME,
            **copy.deepcopy(common),
            "command": [*names.PAYLOAD_ADD_COMMAND, names.payload_dir(options.payload_image)],
            "securityContext": _restricted(uid, gid),
        }
    )
    return inits


def python_path_mechanism(
    options: ClusterOptions, ray: Mapping[str, Any]
) -> tuple[bool, tuple[str, ...], str | None]:
    """How the payload reaches the runtime_env agent's sys.path in one Ray container:
    (through the user site, PYTHONPATH entries to prepend, a note for the user).

    A container's PYTHONPATH replaces the image's ENV PYTHONPATH, and the webhook cannot read
    an image; Python's user site adds to sys.path without replacing anything, so it is the
    default. Where the user site cannot work (the container sets PYTHONUSERBASE or
    PYTHONNOUSERSITE; the image's Python is a venv, declared with the image-pythonpath
    annotation), the payload goes on PYTHONPATH, merged with the container's own value or the
    image's as declared.
    """
    payload_python = f"{names.payload_dir(options.payload_image)}/{names.PAYLOAD_PYTHON}"
    env = {item.get("name"): item for item in list_field(ray, "env") if isinstance(item, Mapping)}
    blocking = [n for n in (names.PYTHONUSERBASE_ENV, names.PYTHONNOUSERSITE_ENV) if n in env]
    if options.image_pythonpath is None and not blocking:
        return True, (), None
    own = names.PYTHONPATH_ENV in env
    if options.image_pythonpath is not None and not own:
        declared = tuple(e for e in options.image_pythonpath.split(":") if e)
        note = (
            f"ray-pixi sets PYTHONPATH to its payload ({payload_python}) plus the image's "
            f"own value as {names.IMAGE_PYTHONPATH_ANNOTATION} declares it "
            f"({options.image_pythonpath or 'none'}): a container's PYTHONPATH replaces the "
            "image's ENV PYTHONPATH, and ray-pixi cannot read the image. Keep the annotation "
            "equal to the image's ENV PYTHONPATH when the image changes"
        )
        return False, (payload_python, *declared), note
    if own:
        return False, (payload_python,), None
    return (
        False,
        (payload_python,),
        (
            f"containers[0] sets {' and '.join(blocking)}, so Python's user site cannot carry "
            f"ray-pixi's payload: it goes on PYTHONPATH ({payload_python}), which replaces "
            "the image's own ENV PYTHONPATH. If the image sets one, declare it with the "
            f"annotation {names.IMAGE_PYTHONPATH_ANNOTATION}"
        ),
    )


def build_env(options: ClusterOptions, user_site: bool = True) -> list[Body]:
    """The Ray container's env vars that the add-on sets whole (a user's value wins)."""
    payload = names.payload_dir(options.payload_image)
    env = [
        {"name": names.PIXI_EXE_ENV, "value": f"{payload}/{names.PAYLOAD_PIXI_LAUNCHER}"},
        {"name": names.STORE_DIR_ENV, "value": names.STORE_DIR},
        {"name": names.PIXI_CACHE_DIR_ENV, "value": names.PIXI_CACHE_DIR},
        {
            "name": names.PLUGIN_CACHE_SIZE_GB_ENV,
            "value": format(options.plugin_cache_size_gb, "g"),
        },
    ]
    if options.disk_budget_gb is not None:
        env.append({"name": names.DISK_BUDGET_GB_ENV, "value": format(options.disk_budget_gb, "g")})
    if options.pixi_version is not None:
        env.append({"name": names.PIXI_VERSION_ENV, "value": options.pixi_version})
    if options.pixi_config_map:
        env.append(
            {
                "name": names.PIXI_CONFIG_FILE_ENV,
                "value": f"{names.PIXI_CONFIG_MOUNT}/{names.PIXI_CONFIG_KEY}",
            }
        )
    if options.pixi_auth_secret:
        env.append(
            {
                "name": names.RATTLER_AUTH_FILE_ENV,
                "value": f"{names.PIXI_AUTH_MOUNT}/{names.PIXI_AUTH_KEY}",
            }
        )
    if user_site:
        env.append({"name": names.PYTHONUSERBASE_ENV, "value": payload})
    return env


def build_injection(options: ClusterOptions, pod: Mapping[str, Any]) -> Injection:
    """Everything one pod template gets, for a template whose pod spec is ``pod``."""
    ray = (pod.get("containers") or [{}])[0] or {}
    user_site, python_path, _ = python_path_mechanism(options, ray)
    return Injection(
        volumes=(build_volume(options), *build_config_volumes(options)),
        volume_mounts=tuple(build_mounts(options)),
        init_containers=tuple(build_init_containers(options, pod)),
        runtime_env_plugins=({"class": names.PLUGIN_CLASS},),
        env=tuple(build_env(options, user_site)),
        python_path=python_path,
        image_pull_secrets=tuple({"name": name} for name in options.payload_image_pull_secrets),
    )


def build_for_new_template(base: Injection, pod: Mapping[str, Any]) -> Injection:
    """A recorded injection for a template the record never saw (a worker group added later):
    its payload installer runs as that template's Ray user."""
    uid, gid = ray_identity(pod)
    return replace(
        base,
        init_containers=tuple(
            _run_as(init, uid, gid) if init.get("name") == names.INIT_CONTAINER_NAME
            else copy.deepcopy(init)
            for init in base.init_containers
        ),
    )  # fmt: skip


def _run_as(init: Mapping[str, Any], uid: int | None, gid: int | None) -> Body:
    result = copy.deepcopy(dict(init))
    security = result.setdefault("securityContext", {})
    if uid is not None and uid > 0:
        security["runAsUser"] = uid
        if gid is not None:
            security["runAsGroup"] = gid
        else:
            security.pop("runAsGroup", None)
    elif "runAsUser" in security:  # a record of this version: the image's uid, explicitly
        security["runAsUser"] = names.PAYLOAD_UID
        security["runAsGroup"] = names.PAYLOAD_UID
    return result


def installer_image(pod: Mapping[str, Any]) -> str | None:
    """The image of the payload installer (``ray-pixi-payload``) in a pod spec; None: none."""
    return next(
        (
            str(init.get("image"))
            for init in pod.get("initContainers") or []
            if init.get("name") == names.INIT_CONTAINER_NAME
        ),
        None,
    )


def carries_injection(spec: Mapping[str, Any]) -> bool:
    """Whether a cluster spec's head template has the payload installer: prepared by ray-pixi
    (or by hand), whether or not an injection record says so."""
    head = next(walk_templates(spec))
    return installer_image(head.pod) is not None
