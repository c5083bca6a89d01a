"""The private Ray names ray-pixi uses, looked up here and nowhere else.

Ray does not promise `ray._private` across releases. Across the supported range (see
`ray_pixi.compat`) the plugin base class is the same, but `local://` working_dirs, and the
function that reads them, arrived only in Ray 2.60. A name this Ray lacks must not become an
ImportError trace in the runtime_env agent (one while Ray builds the plugin takes the node
down): the pixi request that needed it fails with this Ray's version, the name, and what to
do instead. Standard library only, and Python 3.9-safe syntax: `ray_pixi.plugin` imports it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray_pixi import compat
from ray_pixi.errors import PixiSpecError, PixiUnavailableError

__all__ = [
    "PACKAGING",
    "PLUGIN",
    "RAYLET",
    "gcs_kv",
    "local_working_dir",
    "lookup",
    "missing_name",
    "plugin_base",
    "uploaded_working_dir",
]

PLUGIN = "ray._private.runtime_env.plugin"
PACKAGING = "ray._private.runtime_env.packaging"
RAYLET = "ray._raylet"
_LOCAL_SCHEME = "local"
_LOCAL_SINCE = "2.60.0"


def lookup(module: str, name: str) -> Any:
    """`module.name` in this Ray, or None where this release has no such name."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def missing_name(module: str, name: str, needed_for: str, instead: str = "") -> str:
    """What a user reads when this Ray lacks a name a pixi request needs."""
    ray = compat.installed_version("ray") or "(not installed)"
    what = instead or (f"Run the cluster on a Ray release in ray-pixi's supported range "
                       f"({compat.SUPPORTED}).")
    return (f"This Ray ({ray}) has no {module}.{name}, which ray-pixi needs for "
            f"{needed_for}. {what}")


def plugin_base() -> type | None:
    """Ray's `RuntimeEnvPlugin`, which Ray requires every registered plugin to subclass."""
    base = lookup(PLUGIN, "RuntimeEnvPlugin")
    return base if isinstance(base, type) else None


def local_working_dir(uri: str) -> Path | None:
    """The node directory a `local://` working_dir names; None for an uploaded one."""
    read = lookup(PACKAGING, "get_local_dir_uri_path")
    if read is not None:
        local = read(uri)
        return None if local is None else Path(local)
    if urlparse(uri).scheme != _LOCAL_SCHEME:
        return None  # a Ray without local:// support: every working_dir is uploaded
    raise PixiSpecError(missing_name(
        PACKAGING, "get_local_dir_uri_path",
        f"the project spec's working_dir {uri!r}",
        f"This Ray has no local:// working_dir support (Ray {_LOCAL_SINCE} added it): upgrade "
        "Ray, or pass the directory itself as working_dir so Ray uploads it, e.g. "
        f"working_dir={urlparse(uri).path!r}."))


def uploaded_working_dir(uri: str, resources_dir: str) -> Path:
    """Where this node's Ray unpacked the uploaded working_dir `uri`."""
    find = lookup(PACKAGING, "get_local_dir_from_uri")
    if find is None:
        raise PixiUnavailableError(missing_name(
            PACKAGING, "get_local_dir_from_uri",
            f"a project spec (runtime_env['pixi'] with the working_dir {uri!r})",
            "Use an inline spec (pixi(\"pixi.toml\") without include=, or pixi(dependencies="
            f"...)), or run a Ray release in ray-pixi's supported range ({compat.SUPPORTED})."))
    return Path(find(uri, resources_dir))


def gcs_kv(address: str) -> Any:
    """A client of the cluster's GCS key-value store at `address` (the agent's
    `--gcs-address`), as Ray's own agent builds one: `ray._raylet.GcsClient`, whose
    `internal_kv_get/put/del(key, ..., namespace, timeout)` are the same from Ray 2.10 to
    2.60. Blocking (it connects): call it in a thread. Raises PixiUnavailableError, saying
    why, where this Ray has no such client."""
    client = lookup(RAYLET, "GcsClient")
    if client is None:
        raise PixiUnavailableError(missing_name(
            RAYLET, "GcsClient", "sharing one solution across the cluster's nodes",
            "This node solves the environment itself."))
    gcs = client(address=address)
    for name in ("internal_kv_get", "internal_kv_put", "internal_kv_del"):
        if not callable(getattr(gcs, name, None)):
            raise PixiUnavailableError(missing_name(
                RAYLET, f"GcsClient.{name}", "sharing one solution across the cluster's "
                "nodes", "This node solves the environment itself."))
    return gcs
