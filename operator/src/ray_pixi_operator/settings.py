"""The operator's settings: env vars (set by the chart) -> one typed, frozen object at startup.

Invalid settings fail at startup with ``Invalid RAY_PIXI_<NAME>='<value>': <rule>``, so a bad
chart value shows in the pod's log instead of as broken Ray pods later. The value checks are
shared with the per-cluster annotations (``options.build_cluster_options``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "CACHE_VOLUME_KINDS",
    "ENV_PREFIX",
    "Settings",
    "SettingsError",
    "check_cache_host_path",
    "check_cache_size_limit",
    "check_cache_volume",
    "check_config_map_name",
    "check_disk_budget_gb",
    "check_image_pythonpath",
    "check_init_container_cpu",
    "check_init_container_memory",
    "check_pixi_version",
    "check_plugin_cache_size_gb",
    "check_pvc_name",
    "check_secret_name",
    "quantity_bytes",
]

ENV_PREFIX = "RAY_PIXI_"
CACHE_VOLUME_KINDS = ("emptyDir", "hostPath", "persistentVolumeClaim")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

CacheVolumeKind = Literal["emptyDir", "hostPath", "persistentVolumeClaim"]


class SettingsError(ValueError):
    """A setting (env var or `render` flag) has a value the add-on cannot use."""


# --- Value checks: each returns the normalised value or raises ValueError(<rule>) -------------

# The syntax of a Kubernetes quantity of bytes as the API server accepts it (no sign, no
# blanks, no milli-bytes); its value is kubernetes.utils.parse_quantity's, which is laxer
# ("10 Gi" parses, and a Pod with it is refused).
_QUANTITY = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[kMGTPE]|[eE]\d+)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PIXI_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_IMAGE = re.compile(r"^[^\s]+$")


def check_cache_volume(value: str) -> str:
    if value not in CACHE_VOLUME_KINDS:
        raise ValueError("must be one of " + ", ".join(CACHE_VOLUME_KINDS))
    return value


def _quantity(value: str) -> Decimal:
    """A quantity's value, by the `kubernetes` client's parser (imported on first use: it
    loads the whole client, which the webhook never needs otherwise)."""
    from kubernetes.utils.quantity import parse_quantity

    return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]


def _positive_bytes(value: str) -> bool:
    return _QUANTITY.match(value) is not None and _quantity(value) > 0


def check_cache_size_limit(value: str) -> str:
    if not _positive_bytes(value):
        raise ValueError("must be a positive Kubernetes quantity such as 20Gi or 500Mi")
    return value


_CPU = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+|\d+m)$")


def check_init_container_cpu(value: str) -> str:
    if _CPU.match(value) is None or _quantity(value) <= 0:
        raise ValueError("must be a positive CPU quantity such as 200m or 0.5")
    return value


def check_init_container_memory(value: str) -> str:
    if not _positive_bytes(value):
        raise ValueError("must be a positive Kubernetes quantity such as 256Mi or 1Gi")
    return value


def quantity_bytes(value: str) -> int:
    """Bytes in a quantity that check_cache_size_limit accepted (``20Gi``, ``1.5G``, ``1e9``)."""
    return int(_quantity(check_cache_size_limit(value)))


def check_cache_host_path(value: str) -> str:
    parts = value.split("/")
    if not value.startswith("/") or value.rstrip("/") == "" or ".." in parts:
        raise ValueError(
            "must be an absolute directory path on the node, such as /var/cache/ray-pixi"
        )
    return value


def check_pvc_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            "must be the name of an existing PersistentVolumeClaim in the cluster's namespace "
            "(lowercase letters, digits, '-' and '.')"
        )
    return value


def check_pixi_version(value: str) -> str:
    if not _PIXI_VERSION.match(value):
        raise ValueError("must be a pixi release version X.Y.Z such as 0.40.3")
    return value


def check_plugin_cache_size_gb(value: str | float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a number of gigabytes greater than 0, such as 10 or 2.5")
    return number


def check_disk_budget_gb(value: str | float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(
            "must be a number of GiB greater than 0 that the store and pixi's package cache "
            "stay under, such as 40"
        )
    return number


def check_config_map_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            "must be the name of a ConfigMap in the cluster's namespace holding pixi's "
            "config.toml (lowercase letters, digits, '-' and '.')"
        )
    return value


def check_secret_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            "must be the name of a Secret in the cluster's namespace holding rattler's "
            "credentials.json (lowercase letters, digits, '-' and '.')"
        )
    return value


def check_image_pythonpath(value: str) -> str:
    entries = [entry for entry in value.split(":") if entry]
    if any(not entry.startswith("/") for entry in entries) or "\n" in value:
        raise ValueError(
            "must be the Ray image's own PYTHONPATH as its Dockerfile sets it: absolute "
            "directories separated by ':' (or empty when the image sets none)"
        )
    return ":".join(entries)


def _check_pull_secrets(value: str) -> tuple[str, ...]:
    secrets = tuple(name.strip() for name in value.split(",") if name.strip())
    if not all(len(name) <= 253 and _DNS_SUBDOMAIN.match(name) for name in secrets):
        raise ValueError(
            "must be a comma-separated list of image pull Secret names in the clusters' "
            "namespaces, such as regcred"
        )
    return secrets


def _check_bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("must be true or false")
    return value.lower() == "true"


def _check_image(value: str) -> str:
    if not _IMAGE.match(value):
        raise ValueError(
            "must be the image that holds ray-pixi-payload, such as ghcr.io/example/ray-pixi:0.1.0"
        )
    return value


def _check_pull_policy(value: str) -> str:
    if value not in PULL_POLICIES:
        raise ValueError("must be one of " + ", ".join(PULL_POLICIES))
    return value


def _check_port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError("must be a TCP port number between 1 and 65535")
    return int(value)


def _check_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or number > 3600:
        raise ValueError("must be a number of seconds between 0 and 3600, such as 10")
    return number


def _check_interval(value: str) -> float:
    number = _check_seconds(value)
    if number == 0:
        raise ValueError("must be a number of seconds greater than 0, such as 10")
    return number


def _check_file(value: str) -> Path:
    if not Path(value).is_file():
        raise ValueError("must be the path of a readable PEM file (mount the webhook's TLS secret)")
    return Path(value)


def _check_host(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError("must be a DNS name such as ray-pixi-webhook.ray-pixi.svc")
    return value


def _check_managed(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError("must be the name of a MutatingWebhookConfiguration for kopf to manage")
    return value


def _check_namespaces(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not all(len(name) <= 63 and _DNS_LABEL.match(name) for name in names):
        raise ValueError("must be a comma-separated list of namespace names, or empty for all")
    return names


def _check_log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return value.upper()


class Settings(BaseModel):
    """Everything the operator is configured with; field ``foo_bar`` comes from RAY_PIXI_FOO_BAR.

    Mutation-only users (``render``) need just ``payload_image``; the rest has defaults.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # What the mutation injects.
    payload_image: str
    payload_image_pull_policy: str = "IfNotPresent"
    # Secrets (in each cluster's namespace) for pulling the payload image, added to the pods'
    # imagePullSecrets.
    payload_image_pull_secrets: tuple[str, ...] = ()
    pixi_version: str | None = None
    cache_volume: CacheVolumeKind = "emptyDir"
    cache_size_limit: str | None = None
    cache_host_path: str = "/var/cache/ray-pixi"
    # Opt in to a root init container without capabilities that makes a hostPath directory
    # kubelet created (root-owned 0755) writable for the payload installer (mode 1777).
    cache_host_path_prepare: bool = False
    cache_pvc_name: str | None = None
    plugin_cache_size_gb: float = 10.0
    # GiB the store and pixi's package cache stay under (RAY_PIXI_DISK_BUDGET_GB in Ray pods);
    # unset: derived from an emptyDir's sizeLimit, none otherwise.
    disk_budget_gb: float | None = None
    # pixi's configuration for Ray nodes: a ConfigMap with config.toml and a Secret with
    # rattler's credentials.json, in each cluster's namespace.
    pixi_config_map: str | None = None
    pixi_auth_secret: str | None = None
    # The injected init containers' CPU and memory, requests equal to limits (so a Guaranteed
    # pod stays Guaranteed). Raise the memory when the payload init container is OOMKilled.
    init_container_cpu: str = "200m"
    init_container_memory: str = "256Mi"
    # How the operator serves the webhook and what it watches.
    webhook_port: int = 9443
    webhook_cert_file: Path | None = None
    webhook_key_file: Path | None = None
    webhook_host: str | None = None
    webhook_managed: str | None = None
    # How often the webhook checks its certificate files for a renewed pair (loaded in place).
    webhook_cert_reload_seconds: float = 10.0
    # How long the webhook keeps answering after SIGTERM, while Service endpoints drop it.
    webhook_drain_seconds: float = 10.0
    namespaces: tuple[str, ...] = ()
    health_port: int = 8080
    log_level: str = "INFO"

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every env var the operator reads, for the chart to set exactly these."""
        return tuple(cls.env_name(field) for field in cls.model_fields)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check every RAY_PIXI_* setting; an empty value means "not set"."""
        values: dict[str, Any] = {}
        for field in cls.model_fields:
            name = cls.env_name(field)
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            try:
                values[field] = _CHECKS[field](raw)
            except ValueError as error:
                raise SettingsError(f"Invalid {name}={raw!r}: {error}") from None
        if "payload_image" not in values:
            raise SettingsError(
                f"Invalid {cls.env_name('payload_image')}='': required; set it to the image that "
                "holds ray-pixi-payload, such as ghcr.io/example/ray-pixi:0.1.0"
            )
        try:
            settings = cls.model_validate(values)
        except ValidationError as error:  # only reachable through a bug in _CHECKS
            raise SettingsError(str(error)) from None
        settings._check_combination(environ)
        return settings

    def _check_combination(self, environ: Mapping[str, str]) -> None:
        def fail(field: str, rule: str) -> None:
            name = self.env_name(field)
            raise SettingsError(f"Invalid {name}={environ.get(name, '').strip()!r}: {rule}")

        if self.cache_size_limit is not None and self.cache_volume != "emptyDir":
            fail(
                "cache_size_limit",
                f"applies only to {self.env_name('cache_volume')}=emptyDir, "
                f"not {self.cache_volume}; unset it",
            )
        if (
            self.disk_budget_gb is not None
            and self.cache_size_limit is not None
            and self.disk_budget_gb * 2**30 >= quantity_bytes(self.cache_size_limit)
        ):
            fail(
                "disk_budget_gb",
                f"must be less than {self.env_name('cache_size_limit')}="
                f"{self.cache_size_limit}: the volume also holds the payload and an install in "
                "progress; lower it, or unset it to derive it from the size limit",
            )
        if self.cache_volume == "persistentVolumeClaim" and self.cache_pvc_name is None:
            fail(
                "cache_pvc_name",
                f"required with {self.env_name('cache_volume')}=persistentVolumeClaim; "
                "set it to the name of an existing ReadWriteMany claim",
            )
        if (self.webhook_cert_file is None) != (self.webhook_key_file is None):
            missing = "webhook_key_file" if self.webhook_key_file is None else "webhook_cert_file"
            fail(
                missing,
                "set both RAY_PIXI_WEBHOOK_CERT_FILE and RAY_PIXI_WEBHOOK_KEY_FILE, or neither",
            )


_CHECKS: dict[str, Callable[[str], Any]] = {
    "payload_image": _check_image,
    "payload_image_pull_policy": _check_pull_policy,
    "payload_image_pull_secrets": _check_pull_secrets,
    "pixi_version": check_pixi_version,
    "cache_volume": check_cache_volume,
    "cache_size_limit": check_cache_size_limit,
    "cache_host_path": check_cache_host_path,
    "cache_host_path_prepare": _check_bool,
    "cache_pvc_name": check_pvc_name,
    "plugin_cache_size_gb": check_plugin_cache_size_gb,
    "disk_budget_gb": check_disk_budget_gb,
    "pixi_config_map": check_config_map_name,
    "pixi_auth_secret": check_secret_name,
    "init_container_cpu": check_init_container_cpu,
    "init_container_memory": check_init_container_memory,
    "webhook_port": _check_port,
    "webhook_cert_file": _check_file,
    "webhook_key_file": _check_file,
    "webhook_host": _check_host,
    "webhook_managed": _check_managed,
    "webhook_cert_reload_seconds": _check_interval,
    "webhook_drain_seconds": _check_seconds,
    "namespaces": _check_namespaces,
    "health_port": _check_port,
    "log_level": _check_log_level,
}
assert set(_CHECKS) == set(Settings.model_fields), "every setting needs a check"  # noqa: S101
