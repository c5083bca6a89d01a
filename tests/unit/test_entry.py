"""The entry point Ray imports (`ray_pixi.PixiPlugin`) can never take a node down: it loads
with the standard library and Ray's base class alone, on Python 3.9 too, and when the real
implementation cannot load, every pixi request fails with the reason and the supported
range while Ray's calls for other jobs work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ray_pixi import compat
from ray_pixi.errors import PixiUnavailableError
from ray_pixi.plugin import PixiPlugin, describe_load_failure

REPO = Path(__file__).resolve().parents[2]
ENTRY_MODULES = ("__init__", "compat", "errors", "plugin", "rayapi", "uris")
PYENV = Path.home() / ".pyenv" / "versions"


def test_importing_the_package_loads_no_third_party_module() -> None:
    code = ("import sys; import ray_pixi, ray_pixi.uris, ray_pixi.compat; "
            "print(sorted(m for m in ('pydantic', 'tomli_w', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def python39() -> str:
    found = sorted(PYENV.glob("3.9.*/bin/python3.9"))
    if not found:
        pytest.skip(f"no Python 3.9 under {PYENV}")
    return str(found[-1])


def test_what_ray_imports_is_python_39_syntax() -> None:
    sources = [str(REPO / "src" / "ray_pixi" / f"{name}.py") for name in ENTRY_MODULES]
    subprocess.run([python39(), "-m", "py_compile", *sources], check=True)


def test_on_python_39_the_package_imports_and_names_what_is_unsupported() -> None:
    code = ("import ray_pixi, ray_pixi.uris as u, ray_pixi.compat as c; "
            "print(u.get_uris({'pixi': 'pixi.toml'})[0][:7]); print(c.problems()[0])")
    out = subprocess.run([python39(), "-I", "-c", f"import sys; sys.path.insert(0, "
                          f"{str(REPO / 'src')!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "pixi://"
    assert out[1].startswith("Python 3.9.") and "(needs >= 3.10)" in out[1]


def test_the_supported_range_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=" + ".".join(map(str, compat.MIN_PYTHON))
    floors = {d.split(">=")[0].split("[")[0]: d.split(">=")[1].split(",")[0]
              for d in project["dependencies"] if ">=" in d}
    assert compat.parse_version(floors["ray"]) <= compat.MIN_RAY
    assert compat.parse_version(floors["pydantic"]) <= compat.MIN_PYDANTIC
    assert compat.MIN_RAY[:2] == compat.parse_version(floors["ray"])[:2]


def test_the_readme_states_the_same_range() -> None:
    readme = (REPO / "README.md").read_text()
    python, ray, pydantic = (".".join(map(str, v[:2])) for v in (
        compat.MIN_PYTHON, compat.MIN_RAY, compat.MIN_PYDANTIC))
    assert f"Supported: Python >= {python}, Ray >= {ray} and pydantic >= {pydantic}" in readme


def test_problems_name_each_component_outside_the_range() -> None:
    assert compat.problems((3, 11, 7), "2.60.0", "2.11.0") == []
    assert compat.problems((3, 11, 7), "2.10.0", "2.5.0") == []
    assert compat.problems((3, 9, 18), "2.9.3", "1.10.21") == [
        "Python 3.9.18 (needs >= 3.10)", "Ray 2.9.3 (needs >= 2.10.0)",
        "pydantic 1.10.21 (needs >= 2.5.0)"]
    assert compat.problems((3, 11, 7), "", "2.11.0") == ["Ray (not installed) (needs >= 2.10.0)"]


@pytest.fixture
def broken_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a node whose pydantic is 1.x: importing the implementation fails."""
    monkeypatch.setitem(sys.modules, "ray_pixi.node", None)  # import raises ImportError


def test_a_node_that_cannot_load_the_plugin_fails_only_pixi_requests(
    broken_implementation: None,
) -> None:
    plugin = PixiPlugin()  # as Ray builds it in the agent's constructor: never raises
    runtime_env = {"pixi": {"pypi_dependencies": {"six": "*"}}}
    assert plugin.get_uris(runtime_env)  # reference counting keeps working
    assert plugin.get_uris({"pip": ["six"]}) == []
    assert plugin.delete_uri("pixi://x") == 0
    with pytest.raises(PixiUnavailableError) as e:
        plugin.validate(runtime_env)
    assert "ray-pixi cannot run on this Ray node" in str(e.value)
    assert compat.SUPPORTED in str(e.value)
    assert "Jobs without runtime_env['pixi'] are not affected" in str(e.value)
    with pytest.raises(PixiUnavailableError):
        asyncio.run(plugin.create("pixi://x", runtime_env, object()))
    with pytest.raises(PixiUnavailableError):
        plugin.modify_context(["pixi://x"], runtime_env, object())


def test_the_load_failure_names_the_cause_and_the_versions() -> None:
    text = describe_load_failure(ImportError("cannot import name 'model_validator'"))
    assert "ImportError: cannot import name 'model_validator'" in text
    assert f"Python {'.'.join(map(str, sys.version_info[:3]))}" in text


def test_a_node_outside_the_range_is_refused_even_if_the_import_would_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An older Ray may import the implementation and then misbehave: refuse it by version."""
    monkeypatch.setattr(compat, "installed_version",
                        lambda name: "2.9.3" if name == "ray" else "2.11.0")
    plugin = PixiPlugin()
    with pytest.raises(PixiUnavailableError) as e:
        plugin.validate({"pixi": "pixi.toml"})
    assert "Ray 2.9.3 (needs >= 2.10.0)" in str(e.value)
