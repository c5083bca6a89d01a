"""Helpers shared by every test tier (importable as `support`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_PIXI_DIR = REPO / "tests" / "fake_pixi"
FAKE_PIXI = FAKE_PIXI_DIR / "pixi"


def persistent_cache(name: str) -> Path:
    """A directory under the user cache that outlives test runs (PyPI downloads)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "ray-pixi-tests" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def install_count(record: Path) -> int:
    """Real installs the FAKE pixi recorded (one JSON line each)."""
    return len(record.read_text().splitlines()) if record.exists() else 0
