"""``kopf run -m ray_pixi_operator.handlers``: both roles on kopf's default registry.

``kopf run -m`` finds handlers only on the default registry, by importing a module, so this is
the one module that registers anything when imported. ``ray-pixi-operator`` builds a registry
of its own instead (:func:`.roles.build_registry`).
"""

from __future__ import annotations

import kopf

from .roles import register, startup

__all__ = ["configure"]

# The startup hook: settings from the RAY_PIXI_* env vars, both roles in this process.
configure = startup(webhook=True, reconciler=True)
kopf.on.startup()(configure)
register(kopf.get_default_registry(), webhook=True, reconciler=True)
