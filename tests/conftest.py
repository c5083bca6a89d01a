"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import FAKE_PIXI_DIR, persistent_cache


@pytest.fixture
def fake_pixi_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The FAKE pixi first on PATH, its install record, and a shared package cache.

    Yields the record file: one JSON line per real install.
    """
    record = tmp_path / "installs.jsonl"
    monkeypatch.setenv("PATH", os.pathsep.join(
        [str(FAKE_PIXI_DIR), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_PIXI_RECORD", str(record))
    monkeypatch.setenv("PIXI_CACHE_DIR", str(persistent_cache("pixi-cache")))
    monkeypatch.delenv("RAY_PIXI_EXE", raising=False)
    monkeypatch.delenv("RAY_PIXI_PIXI_VERSION", raising=False)
    yield record

# The cluster-in-a-box (tests/kube): etcd + kube-apiserver + KubeRay, for `-m apiserver`.
from kube.fixtures import kube_cluster, kube_namespace  # noqa: E402, F401

# The offline world real pixi runs in (tests/realpixi): pixi, the local conda channel,
# the loopback mirror and PyPI proxy, and the env a Ray node needs to use them.
# `_test_pixi` registers as the fixture `test_pixi` (a conftest name test_* reads as a test).
from realpixi.fixtures import (  # noqa: E402, F401
    _test_pixi,
    conda_channel,
    pixi_config,
    pixi_mirror,
    pixi_node_env,
    pypi_proxy,
)
from realpixi.fixtures import report_header as _realpixi_header  # noqa: E402


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _realpixi_header()
