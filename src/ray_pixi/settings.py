"""Every setting a Ray node gives ray-pixi, in one place: the environment variables the
plugin reads, the store directory they choose, and the runtime_env agent's command-line
flags. The plugin (node.py), `ray-pixi doctor` and `ray-pixi envs` read them through here,
so they agree. Standard library only, and Python 3.9-safe syntax: the CLI imports it
without Ray.

A malformed value raises `InvalidSetting`, `Invalid NAME='value': rule.` plus the fix; no
setting falls back to its default. Ray itself parses RAY_RUNTIME_ENV_PLUGINS,
RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB and RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL, and the first
two when its agent starts, so a value it cannot parse takes the node down before the plugin
runs: for those the guards are `ray-pixi doctor` (before `ray start`) and the KubeRay
add-on's admission.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_SIZE",
    "CREATE_WORKING_DIR",
    "DEFAULT_DOWNLOAD_URL",
    "DISK_BUDGET",
    "DOWNLOAD_URL",
    "LOG_DIR_FLAG",
    "MATCH_LEVEL",
    "NAMES",
    "PIXI_EXE",
    "PIXI_VERSION",
    "PLUGINS",
    "PLUGIN_CLASS",
    "REGISTER_LINE",
    "RUNTIME_ENV_DIR_FLAG",
    "STORE_DIR",
    "InvalidSetting",
    "InvalidSettings",
    "NodeSettings",
    "agent_flag",
    "cache_cap_bytes",
    "disk_budget_bytes",
    "download_url",
    "pixi_exe",
    "pixi_version",
    "plugins",
    "problems",
    "python_match_level",
    "read",
    "store_dir",
]

#: Where environments live; put it on a persistent volume to keep them across restarts.
STORE_DIR = "RAY_PIXI_STORE_DIR"
#: The pixi release every node uses unless a spec pins `pixi_version`.
PIXI_VERSION = "RAY_PIXI_PIXI_VERSION"
#: Explicit path to the pixi binary; wins over PATH (the KubeRay add-on sets it).
PIXI_EXE = "RAY_PIXI_EXE"
#: A mirror of pixi's GitHub releases, for air-gapped clusters.
DOWNLOAD_URL = "RAY_PIXI_DOWNLOAD_URL"
#: The store plus pixi's package cache stay under this many GiB (unset: no budget).
DISK_BUDGET = "RAY_PIXI_DISK_BUDGET_GB"
#: Ray's own cap for a plugin named `pixi` (GiB); ray-pixi applies it to the store as well.
CACHE_SIZE = "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"
#: The plugins Ray's runtime_env agent loads (Ray reads it).
PLUGINS = "RAY_RUNTIME_ENV_PLUGINS"
#: How closely a worker's Python must match the cluster's (Ray reads it).
MATCH_LEVEL = "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL"
#: Where Ray's working_dir plugin put the job's files (Ray sets it during a setup).
CREATE_WORKING_DIR = "RAY_RUNTIME_ENV_CREATE_WORKING_DIR"
#: Every variable named here; no other module of ray_pixi names them.
NAMES = (STORE_DIR, PIXI_VERSION, PIXI_EXE, DOWNLOAD_URL, DISK_BUDGET, CACHE_SIZE, PLUGINS,
         MATCH_LEVEL, CREATE_WORKING_DIR)

PLUGIN_CLASS = "ray_pixi.PixiPlugin"
REGISTER_LINE = f"export {PLUGINS}='[{{\"class\": \"{PLUGIN_CLASS}\"}}]'"
DEFAULT_DOWNLOAD_URL = "https://github.com/prefix-dev/pixi/releases/download"
DEFAULT_CACHE_GIB = 10.0
#: The runtime_env agent's flags for the session's logs and runtime_env resources.
LOG_DIR_FLAG = "log-dir"
RUNTIME_ENV_DIR_FLAG = "runtime-env-dir"

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_URL_SCHEMES = ("https://", "http://", "file://")


class InvalidSetting(ValueError):
    """One malformed setting: `Invalid NAME='value': rule.` and what to do."""

    def __init__(self, name: str, value: str, rule: str, fix: str) -> None:
        self.name, self.value, self.rule, self.fix = name, value, rule, fix
        super().__init__(f"Invalid {name}={value!r}: {rule}. {fix}")

    @property
    def problem(self) -> str:
        """The message without the fix."""
        return f"Invalid {self.name}={self.value!r}: {self.rule}"


class InvalidSettings(ValueError):
    """Every malformed setting of a node, one `InvalidSetting` message per line."""

    def __init__(self, found: Sequence[InvalidSetting]) -> None:
        self.found = tuple(found)
        super().__init__("\n".join(str(e) for e in self.found))


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The value, or None if unset or empty (`NAME=` unsets a variable in a pod spec)."""
    value = env.get(name)
    return value if value else None


def _gib(name: str, value: str, fix: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise InvalidSetting(name, value, "must be a number of GiB greater than 0, such as 10 "
                             "or 2.5", fix)
    return number


def store_dir(env: Mapping[str, str]) -> Path:
    """$RAY_PIXI_STORE_DIR, else `$XDG_CACHE_HOME/ray-pixi/store` (`~/.cache/...`)."""
    explicit = _raw(env, STORE_DIR)
    if explicit is not None:
        if not os.path.isabs(explicit):
            raise InvalidSetting(STORE_DIR, explicit, "must be an absolute path",
                                 "Set it to the store's absolute directory (every Ray process "
                                 "and `ray-pixi envs` must name the same one), or unset it for "
                                 "~/.cache/ray-pixi/store.")
        return Path(explicit)
    home = env.get("HOME") or os.path.expanduser("~")
    cache = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(cache) / "ray-pixi" / "store"


def pixi_version(env: Mapping[str, str]) -> str | None:
    """The pixi release this node uses for specs without `pixi_version`, if pinned."""
    raw = _raw(env, PIXI_VERSION)
    if raw is None:
        return None
    if not _VERSION.match(raw.strip()):
        raise InvalidSetting(PIXI_VERSION, raw, "must be a pixi release version X.Y.Z",
                             "Write it like 0.77.0 (no leading 'v'), or unset it.")
    return raw.strip()


def pixi_exe(env: Mapping[str, str]) -> str | None:
    """$RAY_PIXI_EXE, which must be an executable file; None if unset. Checked on every
    use, not with the node's other settings: a pinned release may stand in for it."""
    raw = _raw(env, PIXI_EXE)
    if raw is not None and not (os.path.isfile(raw) and os.access(raw, os.X_OK)):
        raise InvalidSetting(PIXI_EXE, raw, "is not an executable file",
                             "Point it at the pixi binary, or unset it to use pixi from PATH.")
    return raw


def download_url(env: Mapping[str, str]) -> str:
    """Where pinned pixi releases are fetched from: a mirror, else GitHub."""
    raw = _raw(env, DOWNLOAD_URL)
    if raw is None:
        return DEFAULT_DOWNLOAD_URL
    if not raw.startswith(_URL_SCHEMES):
        raise InvalidSetting(DOWNLOAD_URL, raw, "must be a URL starting with https://, "
                             "http:// or file://", "Set it to the base URL of a mirror of "
                             "pixi's releases (holding v<version>/<asset>), or unset it for "
                             "GitHub.")
    return raw


def disk_budget_bytes(env: Mapping[str, str]) -> int | None:
    """The budget for the store plus pixi's cache in bytes; None if unset (no budget)."""
    raw = _raw(env, DISK_BUDGET)
    if raw is None:
        return None
    return int(_gib(DISK_BUDGET, raw, "Set it to the GiB the store and pixi's cache "
                    "may use together, or unset it for no budget.") * 2**30)


def cache_cap_bytes(env: Mapping[str, str]) -> int:
    """The store's cap in bytes, in Ray's unit for its URI caches (GiB); 10 GiB if unset.
    An empty value is malformed here, as it is to Ray's float()."""
    raw = env.get(CACHE_SIZE)
    if raw is None:
        return int(DEFAULT_CACHE_GIB * 2**30)
    return int(_gib(CACHE_SIZE, raw, "Ray parses it when its agent starts and fails "
                    "the node on a malformed value: set it to a number, such as 10, or unset "
                    "it for 10 GiB.") * 2**30)


def python_match_level(env: Mapping[str, str]) -> str:
    """'minor' or 'patch' (the default), as Ray compares a worker's Python."""
    raw = env.get(MATCH_LEVEL)
    if raw is None:
        return "patch"
    if raw not in ("minor", "patch"):
        raise InvalidSetting(MATCH_LEVEL, raw, "must be 'minor' or 'patch'",
                             "Ray refuses workers under any other value: set one, or unset it "
                             "for 'patch'.")
    return raw


def plugins(env: Mapping[str, str]) -> list[Any] | None:
    """The plugin configs Ray's agent loads; None if unset. Malformed where Ray's agent would
    fail to start: not a JSON list of objects with a "class" and an integer priority 0-100."""
    raw = _raw(env, PLUGINS)  # Ray's agent loads no plugin from an empty value
    if raw is None:
        return None
    fix = f"Write it as a JSON list, e.g. {REGISTER_LINE}."
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise InvalidSetting(PLUGINS, raw, f"is not JSON ({e})", fix) from None
    if not isinstance(parsed, list) or not all(
            isinstance(p, dict) and isinstance(p.get("class"), str) for p in parsed):
        raise InvalidSetting(PLUGINS, raw, 'must be a JSON list of objects with a "class"', fix)
    for p in parsed:
        priority = p.get("priority", 10)
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not 0 <= priority <= 100:
            raise InvalidSetting(PLUGINS, raw, "priority {!r} of {} is not an integer from 0 "
                                 "to 100".format(priority, p["class"]),
                                 "Drop `priority` or give an integer from 0 to 100.")
    return parsed


@dataclass(frozen=True)
class NodeSettings:
    """What the plugin runs with on one node, read once per agent: its variables do not
    change while it runs."""

    store_dir: Path
    pixi_version: str | None
    download_url: str
    disk_budget_bytes: int | None
    cache_cap_bytes: int
    python_match_level: str


_NODE_READERS: Sequence[Callable[[Mapping[str, str]], Any]] = (
    store_dir, pixi_version, download_url, disk_budget_bytes, cache_cap_bytes,
    python_match_level)


def problems(env: Mapping[str, str],
             readers: Sequence[Callable[[Mapping[str, str]], Any]] = (*_NODE_READERS, plugins),
             ) -> list[InvalidSetting]:
    """Every malformed setting under these variables (RAY_PIXI_EXE aside: see pixi_exe)."""
    found = []
    for reader in readers:
        try:
            reader(env)
        except InvalidSetting as e:
            found.append(e)
    return found


def read(env: Mapping[str, str]) -> NodeSettings:
    """The node's settings; raises InvalidSettings naming every malformed one."""
    found = problems(env, _NODE_READERS)
    if found:
        raise InvalidSettings(found)
    return NodeSettings(*(reader(env) for reader in _NODE_READERS))


def agent_flag(name: str, argv: Sequence[str] | None = None) -> str | None:
    """A `--name=value` (or `--name value`) flag from a Ray process's command line, this
    process's by default: Ray tells the plugin its directories only there."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None
