"""The disk budget with real pixi installs through the plugin (RAY_PIXI_DISK_BUDGET_GB, which
the KubeRay add-on derives from the volume's size limit): a second environment fills pixi's
package cache past the budget, and pruning brings the store plus the cache back under it by
deleting the older environment nobody holds and then the packages only it used.

pixi's package cache is this test's own (a fresh PIXI_CACHE_DIR, as on a Ray pod's volume),
seeded with a copy of the machine's uv wheel cache so that Ray's wheels are not downloaded
again; what pruning may delete of that copy is deleted before anything is measured.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray._private.runtime_env.context import RuntimeEnvContext

from ray_pixi import pixi
from ray_pixi.disk import unused_cache_entries
from ray_pixi.plugin import PixiPlugin
from ray_pixi.store import disk_usage
from realpixi.world import PIXI_CACHE
from support import persistent_cache

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
# numpy gives the older environment tens of MB of packages of its own.
OLDER = {"pixi": pixi(dependencies={"six": "*"}, pypi_dependencies={"numpy": "==2.2.6"})}
NEWER = {"pixi": pixi(dependencies={"ray-pixi-test-activation": "*"})}


def conda_entries(cache: Path, name: str) -> list[Path]:
    return sorted(p for p in (cache / "pkgs").glob(f"{name}-*") if p.is_dir())


def wheel_entries(cache: Path, package: str) -> list[Path]:
    """uv's unpacked wheels (archive-v0/<id>/) holding `package`."""
    archive = cache / "uv-cache" / "archive-v0"
    return sorted(p for p in archive.iterdir() if (p / package).is_dir())


def usage(store: Path, cache: Path) -> int:
    return disk_usage(store / "envs", cache)


def test_pruning_keeps_store_and_cache_under_the_budget(
    node_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "pixi-cache"
    shutil.copytree(persistent_cache(PIXI_CACHE) / "uv-cache", cache / "uv-cache", symlinks=True)
    monkeypatch.setenv("PIXI_CACHE_DIR", str(cache))
    # The older environment, installed by another agent on this volume that has since gone
    # (a pod that ended): nobody holds it.
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, str(HERE / "install_child.py"), str(node_env), json.dumps(OLDER["pixi"])],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-3000:]
    first_install = time.monotonic() - started
    older_key = json.loads(child.stdout.strip().splitlines()[-1])["key"]
    for seeded in unused_cache_entries(cache):  # what no environment here links
        shutil.rmtree(seeded)
    older = usage(node_env, cache)
    only_older = disk_usage(*conda_entries(cache, "six"), *wheel_entries(cache, "numpy"))
    assert only_older > 10 * 2**20, "numpy should be tens of MB in pixi's cache"

    # Room for one environment, not for both: the newer one, without the packages only the
    # older uses, fits with a margin of half of those.
    budget = older - only_older // 2
    monkeypatch.setenv("RAY_PIXI_DISK_BUDGET_GB", repr(budget / 2**30))
    plugin = PixiPlugin()
    uri = plugin.get_uris(NEWER)[0]
    started = time.monotonic()
    asyncio.run(plugin.create(uri, NEWER, RuntimeEnvContext()))
    second_install = time.monotonic() - started
    both = usage(node_env, cache)
    (newer_key,) = {p.stem for p in (node_env / "envs").glob("*.json")} - {older_key}

    # Pruning runs in the background after the install: poll for its outcome.
    deadline = time.monotonic() + 120
    while (node_env / "envs" / older_key).exists() or wheel_entries(cache, "numpy"):
        assert time.monotonic() < deadline, (
            f"not pruned: {usage(node_env, cache)} bytes used, budget {budget}"
        )
        time.sleep(0.2)
    after = usage(node_env, cache)
    print(
        f"older environment {older / 2**20:.0f} MiB with its own packages "
        f"{only_older / 2**20:.0f} MiB (install {first_install:.0f} s); budget "
        f"{budget / 2**20:.0f} MiB; with the newer one {both / 2**20:.0f} MiB (install "
        f"{second_install:.0f} s); after pruning {after / 2**20:.0f} MiB"
    )
    assert both > budget, "the second environment did not overfill the budget"
    assert after <= budget
    # The older environment and the packages only it used are gone; the newer one, held by
    # this agent, stays whole, with the packages it links.
    assert not (node_env / "envs" / f"{older_key}.json").exists()
    assert conda_entries(cache, "six") == [] and wheel_entries(cache, "numpy") == []
    assert (node_env / "envs" / f"{newer_key}.json").is_file()
    assert conda_entries(cache, "ray-pixi-test-activation") and conda_entries(cache, "python")
    assert wheel_entries(cache, "ray")
    plugin.delete_uri(uri)
