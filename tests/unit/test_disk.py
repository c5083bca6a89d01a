"""The disk budget: pixi's package cache entries that no environment links to are pruned,
then least-recently-used environments nobody holds, until store plus cache fit; entries an
environment links are kept, and nothing is pruned while an install holds the cache."""

from __future__ import annotations

import os
from pathlib import Path

from ray_pixi.disk import enforce_disk_budget, unused_cache_entries
from ray_pixi.records import ReadyRecord
from ray_pixi.store import Store, disk_usage

MB = 2**20


def package(cache: Path, name: str, size: int) -> Path:
    entry = cache / "pkgs" / name
    (entry / "lib").mkdir(parents=True)
    (entry / "lib" / "data.bin").write_bytes(os.urandom(size))
    (cache / "pkgs" / f"{name}.lock").write_text("")
    return entry


def environment(store: Store, key: str, packages: list[Path], age: float) -> None:
    """An installed environment: its files hard-linked from the cache, as pixi links them."""
    prefix = store.workspace(key) / ".pixi" / "envs" / "default"
    prefix.mkdir(parents=True)
    for entry in packages:
        os.link(entry / "lib" / "data.bin", prefix / f"{entry.name}.bin")
    store.write_ready(ReadyRecord(key, size_bytes=4096))
    then = os.path.getmtime(store.envs / f"{key}.json") - age
    os.utime(store.envs / f"{key}.json", (then, then))


def setup(tmp_path: Path) -> tuple[Store, Path, dict[str, Path]]:
    store, cache = Store(tmp_path / "store"), tmp_path / "cache"
    store.ensure()
    pkgs = {n: package(cache, n, 3 * MB) for n in ("numpy", "ray", "six", "old-only")}
    environment(store, "old" * 10 + "xx", [pkgs["old-only"], pkgs["six"]], age=100)
    environment(store, "new" * 10 + "xx", [pkgs["numpy"], pkgs["ray"]], age=0)
    return store, cache, pkgs


def test_linked_packages_are_in_use_and_orphans_are_not(tmp_path: Path) -> None:
    store, cache, pkgs = setup(tmp_path)
    orphan = package(cache, "orphan", 1 * MB)
    assert list(unused_cache_entries(cache)) == [orphan]


def test_pruning_keeps_store_and_cache_under_the_budget(tmp_path: Path) -> None:
    store, cache, pkgs = setup(tmp_path)
    package(cache, "orphan-a", 3 * MB)
    package(cache, "orphan-b", 3 * MB)
    assert disk_usage(store.envs, cache) > 18 * MB  # 4 packages + 2 orphans, 3 MB each
    result = enforce_disk_budget(store, cache, 10 * MB)
    assert result is not None and result.after <= 10 * MB
    # The orphans went first, then the least recently used environment and its packages.
    assert result.environments == ("old" * 10 + "xx",)
    assert sorted(p.name for p in (cache / "pkgs").iterdir() if p.is_dir()) == ["numpy", "ray"]
    assert (store.workspace("new" * 10 + "xx") / ".pixi" / "envs" / "default" /
            "ray.bin").stat().st_nlink == 2  # the kept environment still links its packages
    assert disk_usage(store.envs, cache) == result.after


def test_an_environment_someone_holds_is_never_evicted(tmp_path: Path) -> None:
    store, cache, _ = setup(tmp_path)
    old = "old" * 10 + "xx"
    held = store.use_lock(old).acquire(shared=True)
    try:
        result = enforce_disk_budget(store, cache, 1 * MB)
    finally:
        held.release()
    assert result is not None and old not in result.environments
    assert store.read_ready(old) is not None


def test_nothing_is_pruned_while_an_install_holds_the_cache(tmp_path: Path) -> None:
    store, cache, _ = setup(tmp_path)
    package(cache, "orphan", 3 * MB)
    held = store.cache_lock().acquire(shared=True)  # a pixi install is linking
    try:
        assert enforce_disk_budget(store, cache, 1 * MB) is None
    finally:
        held.release()
    assert (cache / "pkgs" / "orphan").is_dir()

