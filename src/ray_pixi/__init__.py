"""ray-pixi: run a Ray job's workers inside pixi environments.

    from ray_pixi import pixi
    ray.init(runtime_env={"pixi": pixi("pixi.toml")})

with the plugin registered on every node before `ray start`:
`RAY_RUNTIME_ENV_PLUGINS='[{"class": "ray_pixi.PixiPlugin"}]'`.

Importing the package loads nothing but the standard library: Ray's runtime_env agent
imports it to find `PixiPlugin` on every node, including nodes where the rest of ray-pixi
cannot run (see `ray_pixi.plugin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray_pixi.errors import (
    PixiInstallError,
    PixiNotFoundError,
    PixiSpecError,
    PixiStoreError,
    PixiUnavailableError,
    PixiVersionMismatchError,
)

if TYPE_CHECKING:
    from ray_pixi.driver import pixi
    from ray_pixi.plugin import PixiPlugin
    from ray_pixi.spec import PixiSpec

__all__ = [
    "PixiInstallError",
    "PixiNotFoundError",
    "PixiPlugin",
    "PixiSpec",
    "PixiSpecError",
    "PixiStoreError",
    "PixiUnavailableError",
    "PixiVersionMismatchError",
    "pixi",
]
# The one version of the plugin, the operator, the chart and the image (hatch reads it).
__version__ = "0.2.0"

_LAZY = {"pixi": "ray_pixi.driver", "PixiPlugin": "ray_pixi.plugin", "PixiSpec": "ray_pixi.spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ray_pixi' has no attribute {name!r}")
