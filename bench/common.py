"""What every benchmark shares: the node environment (pixi or the FAKE stand-in, the store,
the package cache), statistics, and tables."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAKE_PIXI = REPO / "tests" / "fake_pixi" / "pixi"
PLUGINS = json.dumps([{"class": "ray_pixi.PixiPlugin"}])
CLUSTER_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])


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
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join(" --- " for _ in self.columns) + "|",
        ]
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
    out = subprocess.run(
        ["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def du_bytes_counting_links(*paths: Path) -> int:
    """Bytes on disk if every hard link were a copy (`du -l`)."""
    out = subprocess.run(
        ["du", "-s", "-c", "-l", "-B1", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def find_pixi() -> tuple[str, bool]:
    """The pixi to benchmark with: `$RAY_PIXI_EXE` or pixi on PATH; else the FAKE stand-in.
    Returns (path, whether it is the stand-in)."""
    explicit = os.environ.get("RAY_PIXI_EXE") or shutil.which("pixi")
    if explicit:
        return explicit, False
    return str(FAKE_PIXI), True


@dataclass
class Node:
    """One node's setting for the whole run: a fresh store, a persistent package cache."""

    root: Path
    pixi: str
    fake: bool

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def record(self) -> Path:
        return self.root / "installs.jsonl"

    @property
    def cache(self) -> Path:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "ray-pixi-bench" / "pixi-cache"

    def environment(self) -> dict[str, str]:
        """What the plugin, the agents and the Ray processes of this run inherit."""
        path = [
            str(Path(self.pixi).parent),
            str(Path(sys.executable).parent),
            os.environ.get("PATH", ""),
        ]
        env = {
            "RAY_RUNTIME_ENV_PLUGINS": PLUGINS,
            "RAY_PIXI_STORE_DIR": str(self.store),
            "PIXI_CACHE_DIR": str(self.cache),
            "PATH": os.pathsep.join(path),
        }
        if self.fake:
            env["FAKE_PIXI_RECORD"] = str(self.record)
        return env

    def installs(self) -> int:
        """Real installs so far (recorded by the FAKE pixi; -1 with a real pixi)."""
        if not self.fake:
            return -1
        return len(self.record.read_text().splitlines()) if self.record.exists() else 0


@contextmanager
def node(keep: bool = False) -> Iterator[Node]:
    """A node for one benchmark run; its environment applied to this process."""
    pixi, fake = find_pixi()
    # Short: Ray puts unix sockets under the temp dir and their paths are length-limited.
    root = Path(tempfile.mkdtemp(prefix="rpb-"))
    n = Node(root, pixi, fake)
    n.cache.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(n.environment())
    for name in ("RAY_PIXI_EXE", "RAY_PIXI_PIXI_VERSION", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    if not fake:
        os.environ["RAY_PIXI_EXE"] = pixi
    try:
        yield n
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if not keep:  # ~1 GB in ~100k files: delete it without holding up the report
            subprocess.Popen(
                ["rm", "-rf", str(root)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


def inline_spec(**pypi: str) -> dict[str, Any]:
    from ray_pixi import pixi

    return pixi(pypi_dependencies=pypi)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
