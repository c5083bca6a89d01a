"""The Ray images ray-pixi supports, stated once, and the gate that refuses the others at CREATE.

The plugin's entry point loads on any Ray node (standard library only, Python 3.9-safe), so an
image outside the range never takes a Ray pod down: every pixi job on it fails with the reason
and the range while other jobs run. The gate refuses at CREATE what can therefore only fail
later: a cluster that opts into ray-pixi on a Ray older than the plugin supports. The operator
cannot look into an image; it reads the cluster's ``spec.rayVersion`` (KubeRay's own field),
or the annotation ``ray-pixi.io/ray-version`` where an admin vouches for what the image really
runs. Python and pydantic cannot be read from the spec: the message names them, and how to pick
an image tag that has them, so the user can check the image.

:data:`SUPPORTED` must equal the plugin's own requirements in the repository's root
``pyproject.toml`` (``requires-python``, ``ray[default]>=``, ``pydantic>=``); a unit test
compares them, so neither side can drift alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import names

__all__ = [
    "NEWEST_TESTED_RAY",
    "SUPPORTED",
    "IncompatibleRay",
    "check_ray_version",
    "describe_supported",
]

# The lowest version of each that the ray-pixi plugin supports in a Ray image (no upper bounds).
SUPPORTED: Mapping[str, tuple[int, ...]] = {
    "ray": (2, 10),
    "python": (3, 10),
    "pydantic": (2, 5),
}

# The newest Ray release the tests ran; newer ones are accepted (the plugin API has not changed
# since 2.10), only not yet proven.
NEWEST_TESTED_RAY = (2, 60)

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)")


class IncompatibleRay(ValueError):
    """The cluster declares a Ray version outside :data:`SUPPORTED`; the message says what to do."""


def describe_supported() -> str:
    """The supported range as users read it: 'Ray >= 2.10, Python >= 3.10, pydantic >= 2.5'."""
    labels = {"ray": "Ray", "python": "Python", "pydantic": "pydantic"}
    return ", ".join(
        f"{labels[name]} >= {'.'.join(map(str, version))}" for name, version in SUPPORTED.items()
    )


def parse_version(text: str) -> tuple[int, ...] | None:
    """The numeric release of a version string ('2.60.0', '2.9.0rc1' -> (2, 9, 0)); None if none."""
    match = _VERSION.match(text.strip())
    return tuple(int(part) for part in match[1].split(".")) if match else None


def check_ray_version(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> str | None:
    """Refuse a cluster spec whose Ray is too old; return a warning when it cannot be told.

    ``spec`` is a RayCluster spec (a RayJob's ``rayClusterSpec``, a RayService's
    ``rayClusterConfig``). The annotation, when set, is what the gate believes.
    """
    vouched = annotations.get(names.RAY_VERSION_ANNOTATION)
    if vouched is not None:
        where, declared = f"metadata.annotations[{names.RAY_VERSION_ANNOTATION!r}]", str(vouched)
        if parse_version(declared) is None:
            raise IncompatibleRay(
                f"{where} must be the Ray version the image runs, such as '2.60.0', got "
                f"{declared!r}: fix or remove the annotation"
            )
    else:
        raw = spec.get("rayVersion")
        if raw is None or str(raw).strip() == "":
            return (
                f"spec.rayVersion is not set, so ray-pixi cannot check that the image runs a "
                f"supported Ray ({describe_supported()}); set spec.rayVersion to the image's Ray "
                f"version, or annotate {names.RAY_VERSION_ANNOTATION} with it"
            )
        where, declared = "spec.rayVersion", str(raw)
    version = parse_version(declared)
    if version is None:
        return (
            f"{where} is {declared!r}, not a version ray-pixi can compare; it supports "
            f"{describe_supported()}. If the image runs a supported Ray, annotate "
            f"{names.RAY_VERSION_ANNOTATION} with its version"
        )
    if version < SUPPORTED["ray"]:
        floor = _dotted(SUPPORTED["ray"])
        raise IncompatibleRay(
            f"{where} is {declared!r}, but ray-pixi supports {describe_supported()} in the Ray "
            f"image (Ray {floor} to {_dotted(NEWEST_TESTED_RAY)} tested, newer accepted); on an "
            f"older Ray every pixi job would fail. Use a Ray {floor}+ image with Python 3.10 or "
            f"newer, tagged with its Python (such as rayproject/ray:{_dotted(NEWEST_TESTED_RAY)}"
            ".0-py311), and set spec.rayVersion to its Ray version; if the image already runs a "
            "supported Ray and spec.rayVersion is stale, annotate "
            f'{names.RAY_VERSION_ANNOTATION}: "<the image\'s Ray version>"'
        )
    return None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
