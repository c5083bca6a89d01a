"""Live local Ray clusters with the plugin registered and REAL pixi, offline: the local
conda channel as conda-forge through the loopback mirror, PyPI through the CONNECT recorder
(see tests/realpixi). Each cluster has its own Ray temp dir, so tests running side by side
on one machine never share a session, and its own store unless a test passes one."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.job_submission import JobStatus, JobSubmissionClient

from support import free_port, installs

PLUGINS = json.dumps([{"class": "ray_pixi.PixiPlugin"}])


@dataclass
class PixiCluster:
    cluster: Cluster
    store: Path
    temp_dir: Path

    @property
    def installs(self) -> int:
        """Completed installs into this cluster's store (its install logs say so)."""
        return installs(self.store)

    @property
    def dashboard(self) -> str:
        """The Jobs API's address, for `ray job submit --address` and JobSubmissionClient."""
        return f"http://{self.cluster.webui_url}"

    def jobs(self) -> JobSubmissionClient:
        """A client of this cluster's Jobs API once it accepts jobs: right after a cluster
        starts, Ray's job head has no agent to hand a job to ("No available agent")."""
        client = JobSubmissionClient(self.dashboard)
        deadline = time.monotonic() + 120
        while True:
            try:
                probe = client.submit_job(entrypoint="python -c pass")
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # poll until the head's agent has registered
        while client.get_job_status(probe) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert time.monotonic() < deadline, "the Jobs API's first job never finished"
            time.sleep(0.2)
        return client

    @property
    def logs(self) -> Path:
        return Path(self.cluster.head_node.get_logs_dir_path())

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


def node_environment(store: Path, pixi_node_env: Mapping[str, str],
                     **extra: str) -> dict[str, str]:
    """What every Ray process of the cluster inherits."""
    return {
        **pixi_node_env,
        "RAY_RUNTIME_ENV_PLUGINS": PLUGINS,
        "RAY_PIXI_STORE_DIR": str(store),
        # Tests read setup errors from the driver.
        "RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED": "1",
        # No token auth unless a test asks for it (Ray 2.59+ turns it on by default for a
        # local cluster ray.init starts, and for `ray start` when ~/.ray/auth_token exists).
        "RAY_AUTH_MODE": "disabled",
        **extra,
    }


@contextmanager
def pixi_cluster(tmp: Path, pixi_node_env: Mapping[str, str], nodes: int = 1, cpus: int = 2,
                 store: Path | None = None, **extra: str) -> Iterator[PixiCluster]:
    store = store or tmp / "store"
    # Ray's socket paths must stay short: a temp dir of its own under /tmp.
    root = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    temp_dir = root / "ray"
    temp_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        # Ray's Cluster writes (and on shutdown deletes) its address in
        # $RAY_TMPDIR/ray/ray_current_cluster, by default the machine's /tmp/ray, which a
        # bare ray.init() anywhere here follows. Ray's Jobs supervisor looks for it in the
        # cluster's temp dir to give each job's driver its RAY_ADDRESS, and without it falls
        # back to any GCS process running on the machine: a job landed on another cluster.
        mp.setenv("RAY_TMPDIR", str(root))
        for name, value in node_environment(store, pixi_node_env, **extra).items():
            mp.setenv(name, value)
        for name in ("RAY_PIXI_PIXI_VERSION", "RAY_ADDRESS"):
            if name not in extra:
                mp.delenv(name, raising=False)
        # A dashboard and a dashboard agent (which runs submitted jobs) on ports of their
        # own: other clusters on this machine may hold Ray's defaults, 8265 and 52365.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus, "temp_dir": str(temp_dir), "include_dashboard": True,
            "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus, temp_dir=str(temp_dir))
        cluster.wait_for_nodes()
        try:
            yield PixiCluster(cluster, store, temp_dir)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory,
                   pixi_node_env: Mapping[str, str]) -> Iterator[PixiCluster]:
    """One cluster for the tests that only need the plugin to work."""
    with pixi_cluster(tmp_path_factory.mktemp("cluster"), pixi_node_env) as c:
        yield c


@pytest.fixture
def own_cluster(tmp_path: Path, pixi_node_env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    """A factory for a cluster with its own store and settings."""
    return lambda **kw: pixi_cluster(tmp_path, pixi_node_env, **kw)


@pytest.fixture
def node_env(pixi_node_env: Mapping[str, str], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process set up as a Ray node (for driving the plugin in-process): real pixi
    offline, a store of its own. Returns the store."""
    store = tmp_path / "store"
    for name, value in node_environment(store, pixi_node_env).items():
        monkeypatch.setenv(name, value)
    for name in ("RAY_PIXI_PIXI_VERSION", "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB",
                 "RAY_PIXI_DISK_BUDGET_GB"):
        monkeypatch.delenv(name, raising=False)
    return store


