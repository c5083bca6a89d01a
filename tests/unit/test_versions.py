"""ray-pixi has one version: the plugin's, the operator's, the chart's and the image tag's.

It is stated in `src/ray_pixi/__init__.py`; every other place that must say it is checked
here, so a release bumps one line and this test names whatever was left behind.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

from kube.release import render_chart
from support import REPO

CHART = REPO / "charts" / "ray-pixi"


def _assigned(path: Path, name: str) -> str:
    """The string literal assigned to `name` at the top level of a module."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            name
        ]:
            assert isinstance(node.value, ast.Constant), f"{path}: {name} is not a literal"
            return str(node.value.value)
    raise AssertionError(f"{path} assigns no {name}")


VERSION = _assigned(REPO / "src" / "ray_pixi" / "__init__.py", "__version__")


def test_the_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_both_packages_take_their_version_from_the_source():
    """pyproject states none; hatch reads the module, so no second copy can drift."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    operator = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())
    for project, source in ((root, "src/ray_pixi/__init__.py"),
                            (operator, "src/ray_pixi_operator/names.py")):
        assert "version" not in project["project"], project["project"]["name"]
        assert "version" in project["project"]["dynamic"]
        assert project["tool"]["hatch"]["version"]["path"] == source


def test_the_operator_states_the_plugins_version():
    operator = _assigned(
        REPO / "operator" / "src" / "ray_pixi_operator" / "names.py", "OPERATOR_VERSION"
    )
    assert operator == VERSION


def test_the_installed_distributions_report_it():
    """What `pip show` says; stale after a version change until `bash .ci/setup-python`."""
    installed = {
        name: importlib.metadata.version(name) for name in ("ray-pixi", "ray-pixi-operator")
    }
    assert installed == {"ray-pixi": VERSION, "ray-pixi-operator": VERSION}, (
        "reinstall the checkout (bash .ci/setup-python)"
    )


def test_the_chart_deploys_the_image_of_that_version_by_default():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)
    # What a default install runs: the operator's and the payload's image, tagged the release.
    images, payload = set(), set()
    for document in render_chart({}, name="ray-pixi", namespace="ray-system"):
        if document["kind"] != "Deployment":
            continue
        (container,) = document["spec"]["template"]["spec"]["containers"]
        images.add(container["image"])
        env = {e["name"]: e.get("value") for e in container["env"]}
        payload.add(env["RAY_PIXI_PAYLOAD_IMAGE"])
    assert images == payload == {f"ghcr.io/ray-pixi/ray-pixi:{VERSION}"}
