"""`ray-pixi envs list|rm|gc|lock`: the environments in a node's store, as `Store.entries`
reports them, with the processes that hold each one and the lock each was installed from.
Removal goes through the store's locks, so an environment a running Ray node uses is never
deleted."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray_pixi import settings
from ray_pixi.commands.common import CliError

__all__ = ["parse_age", "run_gc", "run_list", "run_lock", "run_rm"]


def _open_store(args: argparse.Namespace) -> Any:
    from ray_pixi import doctor
    from ray_pixi.store import Store

    if args.store:
        root, source = Path(args.store), "--store"
    elif os.environ.get(settings.STORE_DIR):
        root, source = settings.store_dir(os.environ), settings.STORE_DIR
    else:
        stores = set()
        for agent in doctor.find_agents():
            with contextlib.suppress(settings.InvalidSetting):  # that node has no store
                stores.add(settings.store_dir(agent.environ))
        if len(stores) == 1:
            root, source = stores.pop(), f"the running Ray agent's {settings.STORE_DIR}"
        else:
            root, source = settings.store_dir(os.environ), "the default"
    store = Store(root)
    if not store.envs.is_dir():
        raise CliError(f"no ray-pixi store at {root} (from {source}); pass --store DIR or set "
                       f"{settings.STORE_DIR} to the directory the Ray nodes use")
    return store, f"{root} (from {source})"


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _ago(then: float) -> str:
    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age; write a number with s, m, h, d or w, e.g. 7d")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                              "w": 604800}[match[2]]


def _install_progress(path: Path) -> dict[str, Any]:
    """What the install under way says it is doing (`ray_pixi.progress`), if it says."""
    from ray_pixi.progress import parse_progress

    try:
        progress = parse_progress(path.read_text())
    except OSError:
        return {}
    if progress is None:
        return {}
    return {"phase": progress.phase, "node": progress.node, "installer_pid": progress.pid,
            "elapsed_seconds": round(max(0.0, time.time() - progress.started), 1)}


def _rows(store: Any) -> list[dict[str, Any]]:
    """Every environment in the store (`Store.entries`), as `envs list --json` prints it,
    with the processes that use each ready one."""
    from ray_pixi import doctor

    rows = []
    for e in store.entries():
        row: dict[str, Any] = {"key": e.key, "status": e.state.value,
                               "size_bytes": e.size_bytes, "last_used": e.last_used,
                               "in_use": e.in_use, "used_by": []}
        if e.record is not None:
            holders = sorted(doctor.lock_holders(store.use_lock(e.key).path))
            row.update(used_by=[doctor.describe_pid(p) for p in holders],
                       environment=e.record.environment, mode=e.record.mode,
                       manifest=e.record.manifest, python=e.record.python, ray=e.record.ray,
                       lock_sha256=e.record.lock_sha256, solution=e.record.solution,
                       solution_source=e.record.solution_source)
        elif e.failure is not None:
            message = e.failure.strip().splitlines()
            row["error"] = message[0] if message else ""
        elif e.state.value == "installing":
            row.update(_install_progress(store.progress_path(e.key)))
        rows.append(row)
    return rows


def _under_way(row: dict[str, Any]) -> str:
    if "phase" not in row:
        return "an install is under way"
    return (f"installing on node {row['node']}: {row['phase']} "
            f"({row['elapsed_seconds']:.0f} s so far)")


def _lock_note(row: dict[str, Any]) -> str:
    """Which pixi.lock a ready environment was installed from, and for a spec without a
    lock, whose solution it was."""
    if not row.get("lock_sha256"):
        return ""
    how = {"solved": "solved here for the cluster", "shared": "the cluster's",
           "kept": "kept from an earlier cluster", "solved-alone": "solved here alone"}
    source = row.get("solution_source")
    return f"; lock {row['lock_sha256'][:12]}" + (f", {how.get(source, source)}" if source
                                                  else "")


def run_lock(args: argparse.Namespace) -> int:
    """Print the pixi.lock an environment (key or unique prefix) was installed from: for an
    inline spec, the cluster's solution. `ray-pixi envs lock KEY > pixi.lock` next to the
    environment's manifest (an inline spec's is `<store>/envs/KEY/pixi.toml`) makes it a
    locked project."""
    store, _ = _open_store(args)
    rows = [r for r in _rows(store) if r["status"] == "ready"]
    (key,) = _resolve_keys(rows, [args.key])
    path = store.lock_file(key)
    if path is None:
        raise CliError(f"environment {key} has no pixi.lock in the store (installed by an "
                       "older ray-pixi?)")
    sys.stdout.write(path.read_text())
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List the environments in this node's store: size, last use, and whether a running
    Ray node uses them (holds the environment's use lock)."""
    store, where = _open_store(args)
    rows = _rows(store)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"store: {where}")
    if not rows:
        print("no environments")
        return 0
    table = [("KEY", "STATUS", "SIZE", "LAST USED", "IN USE", "ENVIRONMENT")]
    for r in rows:
        if r["status"] == "ready":
            what = f"{r['environment']} ({r['mode']}" + (
                f", {r['manifest']}" if r["manifest"] else "") + \
                f"; Python {r['python']}, Ray {r['ray']}" + _lock_note(r) + ")"
        elif r["status"] == "failed":
            what = r["error"][:100]
        else:
            what = _under_way(r) if r["status"] == "installing" else \
                "an interrupted install; `ray-pixi envs gc` removes it"
        in_use = ("yes: " + "; ".join(r["used_by"])) if r["used_by"] else \
            ("yes" if r["in_use"] else "no")
        size = _human_size(r["size_bytes"]) if r["status"] == "ready" else "-"
        table.append((r["key"], r["status"], size, _ago(r["last_used"]), in_use, what))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    ready = [r for r in rows if r["status"] == "ready"]
    print(f"{len(ready)} environment(s), {_human_size(sum(r['size_bytes'] for r in ready))}; "
          f"{sum(1 for r in ready if r['in_use'])} in use")
    return 0


def _remove(store: Any, key: str) -> tuple[bool, str]:
    """Delete `key` unless a process uses or installs it: (removed, why not)."""
    from ray_pixi import doctor

    if store.delete_if_unused(key, background=False):
        return True, ""
    holders = doctor.lock_holders(store.use_lock(key).path) | \
        doctor.lock_holders(store.install_lock(key).path)
    who = "; ".join(doctor.describe_pid(p) for p in sorted(holders)) or "another process"
    return False, f"in use by {who}"


def _resolve_keys(rows: list[dict[str, Any]], wanted: Sequence[str]) -> list[str]:
    keys = []
    for prefix in wanted:
        matches = [r["key"] for r in rows if r["key"].startswith(prefix)]
        if not matches:
            raise CliError(f"no environment {prefix!r} in the store; `ray-pixi envs list` "
                           "shows the keys")
        if len(matches) > 1:
            raise CliError(f"{prefix!r} matches {len(matches)} environments "
                           f"({', '.join(m[:12] for m in matches)}); give more of the key")
        keys.append(matches[0])
    return keys


def run_rm(args: argparse.Namespace) -> int:
    """Remove environments (by key or unique key prefix) that no running Ray node uses.
    An environment in use is never removed: exits 1 and says who uses it."""
    store, where = _open_store(args)
    rows = {r["key"]: r for r in _rows(store)}
    refused = 0
    for key in _resolve_keys(list(rows.values()), args.keys):
        removed, why = _remove(store, key)
        if removed:
            print(f"removed {key} ({_human_size(rows[key]['size_bytes'])})")
        else:
            refused += 1
            print(f"kept {key}: {why}; stop the Ray node using it (`ray stop`) or wait until "
                  "Ray evicts it, then retry", file=sys.stderr)
    return 1 if refused else 0


def run_gc(args: argparse.Namespace) -> int:
    """Remove every environment no running Ray node uses (optionally only those unused for
    --older-than), remembered failures, and what interrupted installs left. Safe while Ray
    runs: an environment in use is kept."""
    store, where = _open_store(args)
    print(f"store: {where}")
    cutoff = time.time() - args.older_than
    freed = removed = kept = 0
    for r in _rows(store):
        if r["status"] == "installing" or r["last_used"] > cutoff:
            continue
        if r["in_use"]:
            kept += 1
            print(f"kept {r['key']}: in use by {'; '.join(r['used_by']) or 'a running agent'}")
            continue
        if args.dry_run:
            print(f"would remove {r['key']} ({r['status']}, {_human_size(r['size_bytes'])}, "
                  f"last used {_ago(r['last_used'])})")
            removed += 1
            freed += r["size_bytes"]
            continue
        ok, why = _remove(store, r["key"])
        if ok:
            removed += 1
            freed += r["size_bytes"]
            print(f"removed {r['key']} ({r['status']}, {_human_size(r['size_bytes'])})")
        else:
            kept += 1
            print(f"kept {r['key']}: {why}")
    if not args.dry_run:
        store.sweep()
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {_human_size(freed)} in {removed} environment(s); {kept} kept in use")
    return 0
