"""Fixtures shared by every tier."""

from __future__ import annotations

import pytest

# The cluster-in-a-box (tests/kube): etcd + kube-apiserver + KubeRay, for `-m apiserver`.
from kube.fixtures import (  # noqa: E402, F401
    kube_cluster,
    kube_namespace,
    kube_node,
    node_namespace,
)

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
