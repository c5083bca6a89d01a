"""Fixtures shared by the payload installer tests (`ray-pixi-payload add` and `install`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A pod's /ray-pixi volume (emptyDir: mode 0777)."""
    path = tmp_path / "ray-pixi"
    path.mkdir()
    path.chmod(0o777)
    return path
