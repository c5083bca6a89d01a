"""Shared constants and loaders for the add-on's tests (a unique module name: every test
directory's conftest is a module called `conftest`, so tests cannot import from theirs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).parent / "manifests"
PAYLOAD_IMAGE = "ghcr.io/example/ray-pixi:0.1.0"


def load_manifest(name: str) -> dict[str, Any]:
    """A realistic Ray manifest from manifests/<name>.yaml, as a fresh dict."""
    return copy.deepcopy(yaml.safe_load((MANIFESTS / f"{name}.yaml").read_text()))
