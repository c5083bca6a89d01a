"""Fixtures for the KubeRay add-on's tests: settings and realistic Ray manifests."""

from __future__ import annotations

import pytest
from operator_support import PAYLOAD_IMAGE, load_manifest
from ray_pixi_operator import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE})


@pytest.fixture
def make_settings():
    """Settings from RAY_PIXI_<KEY> values given as keyword arguments, e.g. cache_volume=..."""

    def make(**env: str) -> Settings:
        values = {"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE}
        values.update({f"RAY_PIXI_{key.upper()}": value for key, value in env.items()})
        return Settings.from_env(values)

    return make


@pytest.fixture
def manifest():
    return load_manifest
