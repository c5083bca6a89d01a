"""What every benchmark shares: the node (real pixi, its world, the store, the package
cache), local Ray clusters on it, statistics, and tables."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# The offline world and the bulk channel come from the test suite (tests/realpixi).
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))
PLUGINS = json.dumps([{"class": "ray_pixi.PixiPlugin"}])
CLUSTER_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
CONDA_FORGE_PROBE = "https://conda.anaconda.org/conda-forge/noarch/repodata.json"
# Ray keeps spare idle workers (prestarted, or left over from a start it no longer needed);
# a sample that lands on one measures no worker start at all. These make the raylet kill
# idle workers at once and never prestart, so every sample is a fresh process (checked).
FRESH_WORKERS = {
    "RAY_num_workers_soft_limit": "0",
    "RAY_idle_worker_killing_time_threshold_ms": "50",
    "RAY_kill_idle_workers_interval_ms": "50",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}
# Node variables the run owns: cleared from this process before it sets its own.
_OWNED = ("RAY_PIXI_EXE", "RAY_PIXI_PIXI_VERSION", "RAY_ADDRESS", "RAY_PIXI_STORE_DIR",
          "RAY_RUNTIME_ENV_PLUGINS", "PIXI_CACHE_DIR", "PIP_CACHE_DIR", "UV_CACHE_DIR",
          "RAY_PIXI_DISK_BUDGET_GB", "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB")


@dataclass
class Table:
    """A result table: printed to the terminal and written into the Markdown report."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join(" --- " for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        cells = [self.columns] + [[_cell(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        out = [f"== {self.title}"]
        for n, row in enumerate(cells):
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        out += [f"   {n}" for n in self.notes]
        return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually measured."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"


def ms(seconds: float) -> float:
    return seconds * 1000.0


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def now() -> float:
    """A clock every process on this machine shares, for cross-process intervals."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time()


def du_bytes(*paths: Path) -> int:
    """Bytes on disk under `paths` per GNU du: hard-linked files counted once per call."""
    out = subprocess.run(["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def du_bytes_counting_links(*paths: Path) -> int:
    """Bytes on disk if every hard link were a copy (`du -l`)."""
    out = subprocess.run(["du", "-s", "-c", "-l", "-B1", *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the node -----------------------------------------------------------------------------
def _conda_forge_reachable(timeout: float = 5.0) -> bool:
    try:
        request = urllib.request.Request(CONDA_FORGE_PROBE, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - fixed https URL
            return True
    except (OSError, ValueError):
        return False


def _users_pixi() -> str | None:
    return os.environ.get("RAY_PIXI_EXE") or shutil.which("pixi")


def _pixi_version(pixi: str, env: Mapping[str, str]) -> str:
    out = subprocess.run([pixi, "--version"], capture_output=True, text=True, env=dict(env),
                         check=True, timeout=60).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    return match.group(0) if match else out.strip()


@dataclass
class Node:
    """One node's setting for the whole run: real pixi in its world, a fresh store, a
    package cache of the benchmark's own (warm across runs, never the user's)."""

    root: Path
    pixi: str
    pixi_version: str
    #: how pixi reaches packages, for the report (one line)
    world: str
    offline: bool
    #: what a Ray node's processes need for pixi (RAY_PIXI_EXE, pixi config, proxies, ...)
    pixi_env: dict[str, str]
    cache: Path
    proxy: Any = None  # the offline world's PyPI proxy (its refused requests are reported)
    bulk_channel: Any = None  # set by open_bulk_channel

    @property
    def store(self) -> Path:
        return self.root / "store"

    def environment(self, store: Path | None = None, cache: Path | None = None,
                    **extra: str) -> dict[str, str]:
        """What the plugin, the agents and the Ray processes inherit."""
        path = [str(Path(self.pixi).parent), str(Path(sys.executable).parent),
                os.environ.get("PATH", "")]
        return {
            **self.pixi_env,
            "RAY_RUNTIME_ENV_PLUGINS": PLUGINS,
            "RAY_PIXI_STORE_DIR": str(store or self.store),
            "PIXI_CACHE_DIR": str(cache or self.cache),
            "PATH": os.pathsep.join(path),
            # Common in container images (and a read-only store has the same effect):
            # workers may not write bytecode, so what is not compiled is compiled on
            # every start.
            "PYTHONDONTWRITEBYTECODE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Measured without token auth, which Ray 2.59+ turns on for a local ray.init
            # cluster (and which writes ~/.ray/auth_token, turning it on for every later
            # `ray start` on the machine).
            "RAY_AUTH_MODE": "disabled",
            **extra,
        }

    def run_pixi(self, args: Sequence[str], cwd: Path | None = None,
                 cache: Path | None = None, check: bool = True,
                 ) -> subprocess.CompletedProcess[str]:
        """Real pixi with this node's configuration, as a user or the plugin runs it."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIXI_", "CONDA_")) and k not in ("PYTHONPATH",
                                                                     "VIRTUAL_ENV")}
        env.update(self.pixi_env)
        env["PIXI_CACHE_DIR"] = str(cache or self.cache)
        env["PIXI_NO_PATH_UPDATE"] = "1"
        done = subprocess.run([self.pixi, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=1800, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"pixi {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        return done

    @contextmanager
    def applied(self, **extra: str) -> Iterator[None]:
        """This process set up as the node (Ray processes started inside inherit it)."""
        saved = dict(os.environ)
        for name in _OWNED:
            os.environ.pop(name, None)
        os.environ.update(self.environment(**extra))
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def bench_cache(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "ray-pixi-bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def node(offline: bool = False, keep: bool = False) -> Iterator[Node]:
    """The node for one benchmark run.

    The user's own pixi (`$RAY_PIXI_EXE`, else pixi on PATH) with the user's pixi config
    and conda-forge, when there is one and conda-forge answers; otherwise (and with
    `offline`) the test suite's offline world: real pixi 0.77.0 (sha256-checked), a local
    conda channel served as conda-forge by a loopback mirror, PyPI through a proxy that
    lets nothing else out.
    """
    # Short: Ray puts unix sockets under its temp dir and their paths are length-limited.
    root = Path(tempfile.mkdtemp(prefix="rpb-", dir="/tmp"))
    cache = bench_cache("pixi-cache")
    with ExitStack() as stack:
        users = None if offline else _users_pixi()
        if users is not None and _conda_forge_reachable():
            env = {"RAY_PIXI_EXE": users, "RAY_USAGE_STATS_ENABLED": "0"}
            version = _pixi_version(users, os.environ)
            n = Node(root, users, version,
                     f"the user's pixi {version} ({users}) with the user's pixi config, "
                     "conda-forge over the internet", False, env, cache)
        else:
            from realpixi.world import open_world

            why = ("--offline" if offline else
                   "no pixi on PATH or in $RAY_PIXI_EXE" if users is None else
                   "conda-forge is not reachable")
            world = stack.enter_context(open_world(root / "world", pixi_cache=cache))
            env = dict(world.env)
            env.pop("PIXI_CACHE_DIR", None)
            n = Node(root, str(world.pixi.path), world.pixi.version,
                     f"the test suite's offline world ({why}): real pixi "
                     f"{world.pixi.describe()}, a local conda channel (CPython "
                     f"{world.channel.version('python')} made relocatable, an activation "
                     "package, noarch six) served as conda-forge by a loopback mirror, PyPI "
                     "through a CONNECT proxy that lets nothing else out",
                     True, env, cache, proxy=world.proxy)
        try:
            yield n
        finally:
            if not keep:  # ~1 GB in ~100k files: delete it without holding up the report
                subprocess.Popen(["rm", "-rf", str(root)], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class LocalCluster:
    """One local Ray cluster of the run (its own temp dir and store)."""

    temp_dir: Path
    store: Path

    @property
    def logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"


@contextmanager
def local_cluster(n: Node, name: str, store: Path | None = None, cpus: int = 2,
                  **extra: str) -> Iterator[LocalCluster]:
    """`ray.init` of a new local cluster with the plugin registered, on node `n`."""
    import ray

    temp_dir = n.root / name
    temp_dir.mkdir(parents=True)
    store = store or n.store
    with n.applied(**{"RAY_PIXI_STORE_DIR": str(store), **extra}):
        ray.init(address="local", num_cpus=cpus, log_to_driver=False,
                 include_dashboard=False, _temp_dir=str(temp_dir))
        try:
            yield LocalCluster(temp_dir, store)
        finally:
            ray.shutdown()


def inline_spec(**pypi: str) -> dict[str, Any]:
    from ray_pixi import pixi

    return pixi(pypi_dependencies=pypi)


def compile_cluster_python() -> int:
    """Byte-compile the cluster's own site-packages (what the floor runs), so the floor is
    not slowed by missing .pyc under PYTHONDONTWRITEBYTECODE. Returns how many source
    files had no bytecode before."""
    import sysconfig

    purelib = Path(sysconfig.get_paths()["purelib"])
    tag = sys.implementation.cache_tag
    missing = sum(1 for p in purelib.rglob("*.py")
                  if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists())
    if missing:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(purelib)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return missing
