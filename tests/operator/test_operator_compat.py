"""The supported range is stated once: the operator's gate equals the plugin's requirements.

The plugin declares what it needs in the repository's root pyproject.toml (`requires-python`,
`ray[default]>=`, `pydantic>=`); the operator cannot import the plugin, so it holds a copy in
`ray_pixi_operator.compat.SUPPORTED`. This test is what keeps the two from drifting: change one
and it fails until the other says the same.
"""

from __future__ import annotations

import re
import tomllib

from ray_pixi_operator.compat import SUPPORTED, describe_supported

from support import REPO

# `name[extras]>=X.Y`: the one form the gate mirrors. Any other form (an upper bound, `~=`)
# fails here on purpose, so whoever writes it decides what the operator should refuse.
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*(?P<version>[0-9.]+)$")


def _lower_bound(text: str, what: str) -> tuple[int, ...]:
    match = _REQUIREMENT.match("x" + text.strip() if text.strip().startswith(">") else text.strip())
    assert match, f"{what}: {text!r} is not of the form '>=X.Y' the operator's gate mirrors"
    return tuple(int(part) for part in match["version"].split("."))


def test_the_operator_gate_states_the_plugins_own_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "ray-pixi"
    declared = {"python": _lower_bound(project["requires-python"], "requires-python")}
    for line in project["dependencies"]:
        name = re.split(r"[\[<>=~! ]", line, maxsplit=1)[0].lower()
        if name in ("ray", "pydantic"):
            declared[name] = _lower_bound(line, name)
    assert declared == dict(SUPPORTED), (
        "ray_pixi_operator.compat.SUPPORTED differs from the plugin's pyproject.toml: "
        f"{dict(SUPPORTED)} != {declared}"
    )


def test_the_range_reads_as_users_see_it():
    assert describe_supported() == "Ray >= 2.10, Python >= 3.10, pydantic >= 2.5"
