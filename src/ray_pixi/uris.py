"""The URIs Ray counts for a runtime_env: a pure function of the runtime_env dict.

Ray calls `get_uris` from its reference table when a worker starts and again when it
exits, before anything validates the runtime_env. So it must never raise, must not look at
the node (a pixi upgrade between the two calls would unbalance the counts), and must be
cheap (it runs on every worker start). Standard library only, Python 3.9-safe: the entry
point Ray imports uses it even when the rest of ray-pixi cannot load.

Which environment a URI names on this node (the store key, which also covers the node's
pixi, platform and the cluster's Python and Ray) is decided later, in `create`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELD", "URI_SCHEME", "get_uris", "names_working_dir_files"]

#: The runtime_env field ray-pixi owns; also the plugin's name in Ray.
FIELD = "pixi"
URI_SCHEME = "pixi://"
_URI_HEX = 32


def names_working_dir_files(value: Any) -> bool:
    """A spec whose manifest lives in runtime_env['working_dir'] (project mode): a plain
    string, or a table naming a manifest without inlining its content."""
    if isinstance(value, str):
        return True
    return isinstance(value, Mapping) and "manifest" in value and "manifest_content" not in value


def get_uris(runtime_env: Mapping[str, Any]) -> list[str]:
    """One `pixi://<sha256>` URI per runtime_env with a pixi field, else none.

    The hash covers the pixi field and, for a project, the working_dir URI, which Ray makes
    content-addressed when it uploads the directory: every input the runtime_env carries.
    """
    try:
        value = runtime_env.get(FIELD)
    except Exception:  # noqa: BLE001 - not a mapping: nothing of ours to count
        return []
    if value is None:
        return []
    parts: dict[str, Any] = {FIELD: value}
    if names_working_dir_files(value):
        parts["working_dir"] = runtime_env.get("working_dir")
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):  # e.g. non-string keys of mixed types
        text = repr(parts)
    return [URI_SCHEME + hashlib.sha256(text.encode()).hexdigest()[:_URI_HEX]]
