"""KubeRay add-on that prepares opted-in RayClusters for Ray's runtime_env "pixi".

The mutation (:func:`prepare`, :func:`restore`, :func:`migrate`) and the webhook's decision
(:func:`admit`) are pure and importable without kopf; the kopf wiring lives in :mod:`.roles`,
:mod:`.webhook` and :mod:`.reconciler` (``kopf run -m ray_pixi_operator.handlers`` for kopf's own
CLI). Never imports ray.
"""

from __future__ import annotations

from .admission import Admission, admit
from .compat import SUPPORTED
from .errors import InjectionError
from .merge import KeptValue
from .mutation import Preparation, migrate, prepare, restore
from .names import OPERATOR_VERSION as __version__
from .options import ClusterOptions, build_cluster_options
from .record import Injection, Record, RecordError
from .settings import Settings, SettingsError
from .templates import is_opted_in

__all__ = [
    "SUPPORTED",
    "Admission",
    "ClusterOptions",
    "Injection",
    "InjectionError",
    "KeptValue",
    "Preparation",
    "Record",
    "RecordError",
    "Settings",
    "SettingsError",
    "__version__",
    "admit",
    "build_cluster_options",
    "is_opted_in",
    "migrate",
    "prepare",
    "restore",
]
