"""KubeRay add-on that prepares opted-in RayClusters for Ray's runtime_env "pixi".

The mutation (:func:`prepare`) is pure and importable without kopf; the kopf wiring lives in
:mod:`ray_pixi_operator.handlers`. Never imports ray.
"""

from __future__ import annotations

from .mutation import (
    ClusterOptions,
    InjectionError,
    KeptValue,
    Preparation,
    build_cluster_options,
    is_opted_in,
    prepare,
)
from .settings import Settings, SettingsError

__all__ = [
    "ClusterOptions",
    "InjectionError",
    "KeptValue",
    "Preparation",
    "Settings",
    "SettingsError",
    "build_cluster_options",
    "is_opted_in",
    "prepare",
]
