"""pixi() on the driver: manifests are inlined with their lock, project files are hashed so
only env-defining edits change the environment, and bad input fails before submission with
the message the agent would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_pixi import PixiSpecError, pixi
from ray_pixi.plugin import PixiPlugin

MANIFEST = '[workspace]\nname = "p"\nplatforms = ["linux-64"]\n'


def project(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pixi.toml").write_text(MANIFEST)
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / "driver.py").write_text("print('hi')\n")
    return tmp_path


def test_manifest_and_lock_are_inlined(tmp_path: Path) -> None:
    project(tmp_path)
    spec = pixi(tmp_path / "pixi.toml", environment="default")
    assert spec == {"environment": "default", "manifest": "pixi.toml",
                    "manifest_content": MANIFEST, "lock_content": "version: 6\n"}


def test_pyproject_manifests_keep_their_name(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pixi.workspace]\n")
    spec = pixi(tmp_path / "pyproject.toml", locked=False)
    assert spec["manifest"] == "pyproject.toml" and "lock_content" not in spec


def test_a_missing_lock_fails_with_the_lock_command(tmp_path: Path) -> None:
    (tmp_path / "pixi.toml").write_text(MANIFEST)
    with pytest.raises(PixiSpecError, match=r"Run `pixi lock --manifest-path .*pixi.toml`"):
        pixi(tmp_path / "pixi.toml")


def test_a_missing_manifest_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PixiSpecError, match="could not find the manifest .*nope.toml"):
        pixi(tmp_path / "nope.toml")


def test_project_digest_ignores_files_outside_the_globs(tmp_path: Path) -> None:
    project(tmp_path)
    before = pixi("pixi.toml", include=["src/**"], working_dir=tmp_path)
    (tmp_path / "driver.py").write_text("print('edited')\n")
    assert pixi("pixi.toml", include=["src/**"], working_dir=tmp_path) == before
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    after = pixi("pixi.toml", include=["src/**"], working_dir=tmp_path)
    assert after["digest"] != before["digest"]
    assert pixi("pixi.toml", include=["src/**"], exclude=["src/pkg/*.py"],
                working_dir=tmp_path)["digest"] != after["digest"]


def test_an_include_symlink_out_of_the_working_dir_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path / "proj")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "src" / "leak")
    with pytest.raises(PixiSpecError, match="resolves outside the working_dir"):
        pixi("pixi.toml", include=["src/**"], working_dir=root)


def test_a_manifest_outside_the_working_dir_is_refused(tmp_path: Path) -> None:
    project(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(PixiSpecError, match="is outside the working_dir"):
        pixi(tmp_path / "a" / "pixi.toml", include=["src/**"], working_dir=tmp_path / "b")


@pytest.mark.parametrize("kwargs", [
    {"pypi_dependencies": {"six": 5}},
    {"dependencies": {"python": "3.11"}, "platforms": ["linux64"]},
    {"channels": "conda-forge", "dependencies": {}},
])
def test_driver_and_agent_give_the_same_message(kwargs: dict) -> None:
    with pytest.raises(PixiSpecError) as on_driver:
        pixi(**kwargs)
    with pytest.raises(PixiSpecError) as in_agent:
        PixiPlugin.validate({"pixi": kwargs})
    assert str(on_driver.value) == str(in_agent.value)


def test_mixing_inline_and_manifest_keys_is_refused(tmp_path: Path) -> None:
    project(tmp_path)
    with pytest.raises(PixiSpecError, match="mixes inline keys"):
        pixi(tmp_path / "pixi.toml", pypi_dependencies={"six": "*"})
