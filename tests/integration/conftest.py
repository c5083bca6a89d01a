"""Live local Ray clusters with the plugin registered and the FAKE pixi on PATH."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from support import FAKE_PIXI_DIR, install_count, persistent_cache

PLUGINS = json.dumps([{"class": "ray_pixi.PixiPlugin"}])


@dataclass
class PixiCluster:
    cluster: Cluster
    store: Path
    record: Path
    logs: Path

    @property
    def installs(self) -> int:
        return install_count(self.record)

    @contextmanager
    def job(self, **init: object) -> Iterator[None]:
        """One Ray job (driver connection) on this cluster."""
        ray.init(address=self.cluster.address, **init)
        try:
            yield
        finally:
            ray.shutdown()

    def envs(self) -> list[str]:
        return sorted(p.name for p in (self.store / "envs").iterdir() if p.is_dir())


def node_environment(tmp: Path, **extra: str) -> dict[str, str]:
    """What every Ray process of the cluster inherits."""
    return {
        "RAY_RUNTIME_ENV_PLUGINS": PLUGINS,
        "RAY_PIXI_STORE_DIR": str(tmp / "store"),
        "PIXI_CACHE_DIR": str(persistent_cache("pixi-cache")),
        "FAKE_PIXI_RECORD": str(tmp / "installs.jsonl"),
        "PATH": os.pathsep.join([str(FAKE_PIXI_DIR), str(Path(sys.executable).parent),
                                 os.environ["PATH"]]),
        # Tests read setup errors from the driver.
        "RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED": "1",
        **extra,
    }


@contextmanager
def pixi_cluster(tmp: Path, nodes: int = 1, cpus: int = 2, **extra: str) -> Iterator[PixiCluster]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in node_environment(tmp, **extra).items():
            mp.setenv(name, value)
        for name in ("RAY_PIXI_EXE", "RAY_PIXI_PIXI_VERSION", "RAY_ADDRESS"):
            mp.delenv(name, raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        try:
            yield PixiCluster(cluster, tmp / "store", tmp / "installs.jsonl",
                              Path(cluster.head_node.get_logs_dir_path()))
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PixiCluster]:
    """One cluster for the tests that only need the plugin to work."""
    with pixi_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def own_cluster(tmp_path: Path):
    """A factory for a cluster with its own store and settings."""
    return lambda **kw: pixi_cluster(tmp_path, **kw)
