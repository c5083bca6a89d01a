"""Fixtures for the KubeRay add-on's tests: settings and realistic Ray manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_pixi_operator import Settings

MANIFESTS = Path(__file__).parent / "manifests"
PAYLOAD_IMAGE = "ghcr.io/example/ray-pixi:0.1.0"


def load_manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / f"{name}.yaml").read_text())


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE})


@pytest.fixture
def make_settings():
    def make(**env: str) -> Settings:
        values = {"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE}
        values.update({f"RAY_PIXI_{key.upper()}": value for key, value in env.items()})
        return Settings.from_env(values)

    return make


@pytest.fixture
def manifest():
    return lambda name: copy.deepcopy(load_manifest(name))
