"""A channel of many tiny packages, for the projects that real users have and small test
channels do not: thousands of packages, several environments, a pixi.lock of megabytes.

Served as a `file://` channel next to conda-forge (pixi reads local channels directly,
and they are exempt from `--offline`); built once per machine and cached like the main
channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .channel import Channel, build_channel
from .condapkg import write_conda
from .manifest import ray_requirement
from .recipes import _digest, _timestamp_ms

__all__ = ["BULK_PREFIX", "BulkRecipe", "build_bulk_channel", "build_bulk_manifest"]

BULK_PREFIX = "ray-pixi-test-bulk"


@dataclass(frozen=True)
class BulkRecipe:
    """`ray-pixi-test-bulk-NNNN`: a noarch package holding one small data file."""

    index: int
    version: str = "1.0.0"
    pypi_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{BULK_PREFIX}-{self.index:04d}"

    def key(self) -> str:
        return _digest("bulk", self.name, self.version)

    def build(self, work: Path, out_dir: Path, build_id: str) -> Path:
        stage = work / "stage"
        data = stage / "share" / BULK_PREFIX / f"{self.name}.txt"
        data.parent.mkdir(parents=True)
        data.write_text(f"{self.name} {self.version}\n")
        index = {
            "name": self.name, "version": self.version, "build": f"h{build_id}_0",
            "build_number": 0, "depends": [], "license": "MIT", "noarch": "generic",
            "subdir": "noarch", "timestamp": _timestamp_ms(),
        }
        return write_conda(stage, index, out_dir, about={"summary": "bulk test package"})


def build_bulk_channel(count: int, cache: Path) -> Channel:
    return build_channel([BulkRecipe(i) for i in range(count)], cache)


def build_bulk_manifest(name: str, python: str, ray_version: str, bulk: Channel,
                        environments: int) -> str:
    """pixi.toml: the default environment has python, Ray and every bulk package; each of
    `environments` more environments lists the bulk packages again (conda only, so they
    solve fast), as a monorepo with many environments does. Its lock grows with both."""
    packages = {p.name: "*" for p in bulk.packages}
    return tomli_w.dumps({
        "workspace": {"name": name, "channels": ["conda-forge", bulk.url],
                      "platforms": ["linux-64"]},
        "dependencies": {"python": f"=={python}", **packages},
        "pypi-dependencies": {"ray": ray_requirement(ray_version)},
        "feature": {f"f{i}": {"dependencies": packages} for i in range(environments)},
        "environments": {f"e{i}": {"features": [f"f{i}"], "no-default-feature": True}
                         for i in range(environments)},
    })
