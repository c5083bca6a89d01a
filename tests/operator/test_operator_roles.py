"""Which handlers a process serves is decided by the registry it builds, never by an import.

Reads kopf's registries through their (private) handler lists: what `kopf run` would serve.
"""

from __future__ import annotations

import json
import subprocess
import sys

import kopf
from ray_pixi_operator import names
from ray_pixi_operator.reconciler import POD_INDEX
from ray_pixi_operator.roles import build_registry

from support import REPO

OPERATOR = REPO / "operator" / "src" / "ray_pixi_operator"

_LIST_DEFAULT_REGISTRY = """
import importlib, json, sys
import kopf
for module in sys.argv[1:]:
    importlib.import_module(module)
registry = kopf.get_default_registry()
print(json.dumps({
    "webhooks": [h.id for h in registry._webhooks.get_all_handlers()],
    "indices": [h.id for h in registry._indexing.get_all_handlers()],
    "watches": [h.id for h in registry._watching.get_all_handlers()],
}))
"""


def _served(registry: kopf.OperatorRegistry) -> dict[str, list[str]]:
    return {
        "webhooks": [h.id for h in registry._webhooks.get_all_handlers()],
        "indices": [h.id for h in registry._indexing.get_all_handlers()],
        "watches": [h.id for h in registry._watching.get_all_handlers()],
    }


def _default_registry_after_importing(*modules: str) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", _LIST_DEFAULT_REGISTRY, *modules],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


BOTH = {
    "webhooks": [names.WEBHOOK_ID],
    "indices": [POD_INDEX],
    "watches": ["reconcile_raycluster"],
}


def test_importing_any_module_but_the_kopf_entry_point_registers_nothing():
    modules = sorted(
        f"ray_pixi_operator.{path.stem}"
        for path in OPERATOR.glob("*.py")
        if path.stem not in ("__init__", "handlers")
    )
    assert "ray_pixi_operator.webhook" in modules
    assert _default_registry_after_importing("ray_pixi_operator", *modules) == {
        "webhooks": [],
        "indices": [],
        "watches": [],
    }


def test_kopf_run_m_handlers_serves_both_roles_on_kopfs_default_registry():
    assert _default_registry_after_importing("ray_pixi_operator.handlers") == BOTH


def test_each_role_builds_a_registry_of_its_own_handlers():
    assert _served(build_registry(webhook=True, reconciler=True)) == BOTH
    assert _served(build_registry(webhook=True, reconciler=False)) == {
        "webhooks": [names.WEBHOOK_ID],
        "indices": [],
        "watches": [],
    }
    assert _served(build_registry(webhook=False, reconciler=True)) == {
        "webhooks": [],
        "indices": [POD_INDEX],
        "watches": ["reconcile_raycluster"],
    }
