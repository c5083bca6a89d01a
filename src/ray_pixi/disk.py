"""Keep the store and pixi's package cache under one disk budget.

pixi links packages from its cache into environments (hard links on one filesystem), so the
cache and the store must share a volume, and nothing in pixi bounds the cache: on a Ray pod
whose volume has a size limit, the pod is evicted once installs fill it. With a budget
(`RAY_PIXI_DISK_BUDGET_GB`, which the KubeRay add-on derives from the volume's size limit),
after each install the plugin deletes cache entries that no environment links to any more,
then least-recently-used environments nobody holds, until both fit.

An entry is unused when none of its files has a second hard link: every environment that
installed from it holds a link. Pruning takes the store's cache lock exclusively, which
every `pixi install` the plugin runs holds shared, so no install links from an entry while
it is deleted. Blocking: runs in a background thread.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ray_pixi.store import Store, disk_usage

__all__ = ["Pruned", "enforce_disk_budget", "pixi_cache_dir", "unused_cache_entries"]


def pixi_cache_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    """pixi's package cache under these variables, and what chose it, resolved as pixi
    0.77 does: PIXI_CACHE_DIR, RATTLER_CACHE_DIR, then `$XDG_CACHE_HOME/pixi` only if that
    directory exists, else `$XDG_CACHE_HOME/rattler/cache` (`~/.cache/rattler/cache`). A
    `[cache] root` in pixi's config files sits between the variables and the defaults."""
    for var in ("PIXI_CACHE_DIR", "RATTLER_CACHE_DIR"):
        if env.get(var):
            return Path(env[var]), var
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    xdg = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    if (xdg / "pixi").is_dir():
        return xdg / "pixi", f"{xdg / 'pixi'} existing"
    return xdg / "rattler" / "cache", "the default"


def _linked_elsewhere(entry: Path) -> bool:
    """Whether any regular file under `entry` has another hard link (an environment)."""
    for dirpath, _, filenames in os.walk(entry):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                return True
    return False


def unused_cache_entries(cache: Path) -> Iterator[Path]:
    """Extracted packages no environment links to: conda packages (`pkgs/<name>-<v>-<b>/`)
    and uv's unpacked wheels (`uv-cache/archive-v0/<id>/`)."""
    for parent in (cache / "pkgs", cache / "uv-cache" / "archive-v0"):
        try:
            entries = sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            continue
        for entry in entries:
            if not _linked_elsewhere(entry):
                yield entry


@dataclass(frozen=True)
class Pruned:
    before: int
    after: int
    cache_entries: int
    environments: tuple[str, ...]


def _usage(store: Store, cache: Path) -> int:
    return disk_usage(store.envs, cache)


def enforce_disk_budget(store: Store, cache: Path, budget: int,
                        keep: frozenset[str] = frozenset()) -> Pruned | None:
    """Bring the store plus the cache under `budget` bytes; None if another prune or an
    install holds the cache lock (the next install tries again)."""
    pruning = store.cache_lock().try_acquire()
    if pruning is None:
        return None
    with pruning:
        before = usage = _usage(store, cache)
        pruned = 0
        evicted: list[str] = []
        while usage > budget:
            removed = 0
            for entry in unused_cache_entries(cache):
                shutil.rmtree(entry, ignore_errors=True)
                lock = entry.parent / f"{entry.name}.lock"
                if lock.is_file():
                    lock.unlink(missing_ok=True)
                removed += 1
            pruned += removed
            usage = _usage(store, cache)
            if usage <= budget:
                break
            # Deleting an environment unlinks its packages: the next pass prunes them.
            victims = store.evict_over_cap(0, keep, limit=1, background=False)
            if not victims and not removed:
                break
            evicted += victims
            usage = _usage(store, cache)
        return Pruned(before, usage, pruned, tuple(evicted))
