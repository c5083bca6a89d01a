"""What ray-pixi runs on, stated once: the Python, Ray and pydantic a Ray node needs for the
plugin to work. Standard library only, and Python 3.9-safe syntax, because the entry point
Ray imports reads it before anything else can fail.

pyproject.toml's `requires-python` and dependency floors say the same (a unit test holds
them together), and the KubeRay add-on's admission gate refuses clusters outside it.
"""

from __future__ import annotations

import sys

__all__ = [
    "MIN_PYDANTIC",
    "MIN_PYTHON",
    "MIN_RAY",
    "SUPPORTED",
    "installed_version",
    "parse_version",
    "problems",
]

MIN_PYTHON = (3, 10)
MIN_RAY = (2, 10, 0)
MIN_PYDANTIC = (2, 5, 0)
SUPPORTED = "Python >= 3.10, Ray >= 2.10.0 and pydantic >= 2.5.0"


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """The leading numeric release of a version string ('2.60.0rc1' -> (2, 60, 0))."""
    if not text:
        return None
    parts = []
    for piece in text.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts) or None


def installed_version(distribution: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:  # noqa: BLE001 - not installed, or unreadable metadata
        return None


def problems(
    python: tuple[int, ...] | None = None,
    ray: str | None = None,
    pydantic: str | None = None,
) -> list[str]:
    """What is outside the supported range on this interpreter (or the versions given)."""
    python = tuple(sys.version_info[:3]) if python is None else python
    ray = installed_version("ray") if ray is None else ray
    pydantic = installed_version("pydantic") if pydantic is None else pydantic
    found = []
    if python[:2] < MIN_PYTHON:
        found.append("Python {} (needs >= {})".format(
            ".".join(map(str, python)), ".".join(map(str, MIN_PYTHON))))
    for name, seen, floor in (("Ray", ray, MIN_RAY), ("pydantic", pydantic, MIN_PYDANTIC)):
        parsed = parse_version(seen)
        if parsed is None or parsed < floor:
            found.append("{} {} (needs >= {})".format(
                name, seen or "(not installed)", ".".join(map(str, floor))))
    return found
