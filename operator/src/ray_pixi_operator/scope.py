"""What both kopf roles share: the resource they serve, the opt-in filter, and the settings
each handler reads from kopf's memo.

Imports neither role, so :mod:`.webhook`, :mod:`.reconciler` and :mod:`.roles` each import
first without a cycle.
"""

from __future__ import annotations

import os
from typing import Any

from . import names
from .settings import Settings

__all__ = ["MEMO_KEY", "OPTED_IN", "RAYCLUSTERS", "settings_from", "watched"]

# Where the operator's Settings live in kopf's memo (set by the CLI, or read from env).
MEMO_KEY = "ray_pixi_settings"

RAYCLUSTERS = (names.RAY_API_GROUP, names.RAY_API_VERSION, names.RAYCLUSTER_PLURAL)
OPTED_IN = {names.ENABLED_LABEL: names.ENABLED_VALUE}


def settings_from(memo: Any) -> Settings:
    """The operator's Settings; read from env vars once where no CLI put them in the memo."""
    settings = memo.get(MEMO_KEY)
    if settings is None:  # `kopf run -m` without the CLI
        settings = memo[MEMO_KEY] = Settings.from_env(os.environ)
    return settings  # type: ignore[no-any-return]


def watched(settings: Settings, namespace: str | None) -> bool:
    """Whether a namespace is one the operator serves (all of them unless it is namespaced)."""
    return not settings.namespaces or namespace in settings.namespaces
