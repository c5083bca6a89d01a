"""One Ray release as a user of it has it: its own venv (`ray[default]==X`, ray-pixi installed
without letting the installer change Ray's dependencies, plus pydantic and tomli-w), and a
head node started from that venv with `ray start` on ports of its own, in the offline world
real pixi runs in (tests/realpixi)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import REPO, free_port, persistent_cache, stop_cluster_under

#: Which Ray releases the tier runs (comma-separated, or `long`): by default the supported
#: floor and the newest.
RELEASES_VAR = "RAY_PIXI_COMPAT_RAYS"
DEFAULT_RELEASES = "2.10.0,2.60.0"
#: The long run (`bash .ci/run --long`) adds 2.40, and what KubeRay v1.7.0 runs: 2.52.0 in
#: its sample RayClusters, 2.55.0 by default in its e2e suite.
LONG_RELEASES = "2.10.0,2.40.0,2.52.0,2.55.0,2.60.0"
PLUGINS = json.dumps([{"class": "ray_pixi.PixiPlugin"}])
#: Ray's URI-cache cap for the plugin (GiB): so small that every finished job's environment
#: is evicted once another is installed, so eviction runs in every scenario.
TINY_CACHE_GB = "0.000001"


def releases() -> list[str]:
    wanted = os.environ.get(RELEASES_VAR, "").strip() or DEFAULT_RELEASES
    wanted = LONG_RELEASES if wanted == "long" else wanted
    return [v.strip() for v in wanted.split(",") if v.strip()]


def build_venv(release: str, root: Path) -> Path:
    """A venv with `ray[default]==release` and ray-pixi; returns its directory."""
    uv = Path(sys.executable).parent / "uv"
    venv = root / f"ray-{release}"
    env = {**os.environ, "UV_CACHE_DIR": str(persistent_cache("uv"))}
    env.pop("VIRTUAL_ENV", None)
    python = str(venv / "bin" / "python")
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)],
                   check=True, env=env)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", python,
                    f"ray[default]=={release}", "pydantic>=2.5", "tomli-w>=1.0"],
                   check=True, env=env)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--no-deps", "--python", python,
                    str(REPO)], check=True, env=env)
    return venv


def free_ports(count: int) -> list[int]:
    """Distinct free ports (support.free_port: below the kernel's ephemeral range)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class ReleaseCluster:
    release: str
    venv: Path
    address: str  # the GCS address, for ray.init
    dashboard: str  # the Jobs API, for `ray job submit --address`
    store: Path
    temp_dir: Path
    env: dict[str, str]  # what every process of the cluster and its drivers inherit

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def ray_cli(self) -> str:
        return str(self.venv / "bin" / "ray")

    def logs_text(self) -> str:
        """Every log of this cluster's session (runtime_env_agent.log among them)."""
        return "\n".join(p.read_text(errors="replace")
                         for p in self.temp_dir.glob("session_*/logs/**/*")
                         if p.is_file() and p.suffix in (".log", ".err", ".out"))


def node_environment(venv: Path, home: Path, store: Path,
                     pixi_node_env: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: this release's venv first on PATH, nothing of the test's."""
    return {**pixi_node_env, "HOME": str(home), "LANG": "C.UTF-8",
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "RAY_RUNTIME_ENV_PLUGINS": PLUGINS, "RAY_PIXI_STORE_DIR": str(store),
            "RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED": "1",
            "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB": TINY_CACHE_GB}


@contextmanager
def head_node(release: str, venv: Path, root: Path,
              pixi_node_env: Mapping[str, str]) -> Iterator[ReleaseCluster]:
    """`ray start --head` from the release's venv, with the dashboard (the Jobs API) on;
    stops only this cluster's processes."""
    home, store = root / "home", root / "store"
    home.mkdir(exist_ok=True)
    env = node_environment(venv, home, store, pixi_node_env)
    # Ray's socket paths must stay short: a temp dir of its own under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix=f"rp-compat-{release}-", dir="/tmp"))
    gcs, dashboard, client, agent, agent_grpc, node_manager, objects, metrics, runtime_env = (
        free_ports(9))
    command = [
        str(venv / "bin" / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--num-cpus", "2", "--temp-dir", str(temp_dir),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(objects),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
        "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True,
                                 timeout=300)
        if started.returncode != 0:
            raise RuntimeError(f"ray start ({release}) failed:\n{started.stdout}\n"
                               f"{started.stderr}")
        found = re.search(r"ray start --address='([^']+)'", started.stdout)
        cluster = ReleaseCluster(release, venv, found[1] if found else f"127.0.0.1:{gcs}",
                                 f"http://127.0.0.1:{dashboard}", store, temp_dir, env)
        wait_for_jobs_api(cluster)
        yield cluster
    finally:
        stop_cluster_under(temp_dir)  # never `ray stop`: it stops every Ray on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


ACCEPTS_JOBS = """
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

deadline = time.monotonic() + 180
while True:
    try:
        client = JobSubmissionClient(sys.argv[1])
        job = client.submit_job(entrypoint="python -c pass")
        break
    except Exception as e:  # not up yet, or no agent registered yet ("No available agent")
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)  # poll until the head's dashboard and agent accept jobs
while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
    assert time.monotonic() < deadline, "the Jobs API's first job never finished"
    time.sleep(0.2)
print(client.get_job_status(job))
"""


def wait_for_jobs_api(cluster: ReleaseCluster) -> None:
    """Until the head's Jobs API runs a job: right after `ray start` it may refuse them."""
    done = subprocess.run([cluster.python, "-c", ACCEPTS_JOBS, cluster.dashboard],
                          env=cluster.env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or "SUCCEEDED" not in done.stdout:
        raise RuntimeError(f"Ray {cluster.release}'s Jobs API at {cluster.dashboard} never "
                           f"ran a job:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
