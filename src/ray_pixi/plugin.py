"""`PixiPlugin`, the class `RAY_RUNTIME_ENV_PLUGINS` names: the entry point Ray imports.

Ray imports and builds every registered plugin inside the runtime_env agent's constructor,
unguarded: an exception there kills the agent and, with it, the raylet, failing every job
on the node. So this module uses only the standard library and Ray's plugin base class
(looked up by `ray_pixi.rayapi`; Python 3.9-safe syntax), never raises while Ray builds
it, and loads the real implementation (`ray_pixi.node`, which needs pydantic 2 and
Python 3.10) on first use. If that cannot load on this node, every pixi request fails with
the reason and the supported range, and jobs without `runtime_env["pixi"]` run as if the
plugin were not there.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from ray_pixi import compat, rayapi
from ray_pixi.errors import PixiUnavailableError
from ray_pixi.uris import FIELD, get_uris

if TYPE_CHECKING:
    from ray._private.runtime_env.plugin import RuntimeEnvPlugin
else:
    # A Ray without it cannot load any third-party plugin; importing this module must
    # still not fail, so every pixi request can say why (see `PixiPlugin._impl`).
    RuntimeEnvPlugin = rayapi.plugin_base() or object

__all__ = ["PixiPlugin"]

default_logger = logging.getLogger(__name__)


def _versions() -> str:
    python = ".".join(map(str, sys.version_info[:3]))
    return "Python {}, Ray {}, pydantic {}".format(
        python, compat.installed_version("ray") or "(not installed)",
        compat.installed_version("pydantic") or "(not installed)")


def describe_load_failure(error: BaseException) -> str:
    """What a user reads on every pixi request when the implementation cannot load."""
    outside = compat.problems()
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    why = "; outside the supported range: " + ", ".join(outside) if outside else ""
    return (
        f"ray-pixi cannot run on this Ray node ({_versions()}): loading it failed with "
        f"{type(error).__name__}: {first}{why}. ray-pixi supports {compat.SUPPORTED}. Jobs "
        "without runtime_env['pixi'] are not affected. Run the cluster on an image with a "
        "supported Python, Ray and pydantic, or leave this cluster without ray-pixi."
    )


class PixiPlugin(RuntimeEnvPlugin):
    """Installs `runtime_env["pixi"]` once per node and starts workers inside it."""

    name = FIELD

    def __init__(self) -> None:
        self._node: Any = None
        self._failure: str | None = None
        self._loading = threading.Lock()

    def _impl(self) -> Any:
        if self._node is None and self._failure is None:
            with self._loading:
                if self._node is None and self._failure is None:
                    try:
                        if rayapi.plugin_base() is None:
                            raise RuntimeError(rayapi.missing_name(
                                rayapi.PLUGIN, "RuntimeEnvPlugin",
                                "every runtime_env['pixi'] request (Ray loads plugins by it)"))
                        outside = compat.problems()
                        if outside:
                            raise RuntimeError("unsupported " + ", ".join(outside))
                        from ray_pixi.node import PixiNode

                        self._node = PixiNode()
                    except Exception as error:  # noqa: BLE001 - reported on every request
                        self._failure = describe_load_failure(error)
                        default_logger.error("%s", self._failure, exc_info=True)
        if self._failure is not None:
            raise PixiUnavailableError(self._failure)
        return self._node

    # -- Ray's protocol ------------------------------------------------------------------
    def validate(self, runtime_env_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self._impl().validate(runtime_env_dict)

    def get_uris(self, runtime_env: Any) -> list[str]:
        return get_uris(runtime_env)

    async def create(
        self,
        uri: str | None,
        runtime_env: Any,
        context: Any,
        logger: logging.Logger = default_logger,
    ) -> float:
        return float(await self._impl().create(uri, runtime_env, context, logger))

    def modify_context(
        self,
        uris: list[str],
        runtime_env: Any,
        context: Any,
        logger: logging.Logger = default_logger,
    ) -> None:
        self._impl().modify_context(uris, runtime_env, context, logger)

    def delete_uri(self, uri: str, logger: logging.Logger = default_logger) -> float:
        if self._node is None:
            return 0
        try:
            return float(self._node.delete_uri(uri, logger))
        except Exception:  # noqa: BLE001 - Ray calls this on its event loop; never raise
            logger.exception("ray-pixi could not forget %s", uri)
            return 0
