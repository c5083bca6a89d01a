"""TOML for manifests and pixi configuration: the standard library's tomllib from Python
3.11 (tomli, its backport, on 3.10) to read, tomli-w to write.

The KubeRay add-on's payload puts only `ray_pixi` on a Ray container's sys.path, so that
nothing it carries shadows what a user's environment or image pinned; it vendors tomli-w (and
tomli, for 3.10) inside it, in `ray_pixi/_vendor/`. When the regular package is missing, the
vendored copy is loaded under its own name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["VENDOR_DIR", "tomllib", "vendored"]

VENDOR_DIR = Path(__file__).resolve().parent / "_vendor"


def vendored(name: str, vendor_dir: Path | None = None) -> ModuleType:
    """The package `name` from `ray_pixi/_vendor/<name>/`, registered as `name` (its own
    absolute imports then resolve inside it); ImportError if it is not vendored there."""
    if name in sys.modules and sys.modules[name] is not None:
        return sys.modules[name]
    package = (vendor_dir or VENDOR_DIR) / name
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    if spec is None or spec.loader is None or not (package / "__init__.py").is_file():
        raise ImportError(
            f"No module named {name!r}, and no copy of it vendored in {package}: install "
            f"{name.replace('_', '-')} where Ray runs, or use the ray-pixi payload image"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        tomllib = vendored("tomli")
