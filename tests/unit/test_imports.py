"""Every module of both packages imports first, in a fresh interpreter of its own.

An import cycle hides while some other module happens to be imported first (a test module,
a package ``__init__``); only a module imported before anything else shows it. So each module
gets its own subprocess, and any error there fails with its traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

PACKAGES = (REPO / "src" / "ray_pixi", REPO / "operator" / "src" / "ray_pixi_operator")


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(package.parent).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules()


def test_both_packages_are_found():
    """Guards the discovery itself: an empty list would pass every import below."""
    assert {"ray_pixi.plugin", "ray_pixi_operator.webhook", "ray_pixi_operator.reconciler"} <= set(
        MODULES
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(module: str, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=tmp_path,  # not the checkout: the installed packages, as a user imports them
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"
