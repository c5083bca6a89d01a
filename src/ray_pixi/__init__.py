"""ray-pixi: run a Ray job's workers inside pixi environments.

    from ray_pixi import pixi
    ray.init(runtime_env={"pixi": pixi("pixi.toml")})

with the plugin registered on every node before `ray start`:
`RAY_RUNTIME_ENV_PLUGINS='[{"class": "ray_pixi.PixiPlugin"}]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray_pixi.driver import pixi
from ray_pixi.errors import (
    PixiInstallError,
    PixiNotFoundError,
    PixiSpecError,
    PixiVersionMismatchError,
)
from ray_pixi.spec import PixiSpec

if TYPE_CHECKING:
    from ray_pixi.plugin import PixiPlugin

__all__ = [
    "PixiInstallError",
    "PixiNotFoundError",
    "PixiPlugin",
    "PixiSpec",
    "PixiSpecError",
    "PixiVersionMismatchError",
    "pixi",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The plugin imports Ray's agent-side machinery; drivers that only call pixi() skip it.
    if name == "PixiPlugin":
        from ray_pixi.plugin import PixiPlugin

        return PixiPlugin
    raise AttributeError(f"module 'ray_pixi' has no attribute {name!r}")
