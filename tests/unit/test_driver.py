"""pixi() on the driver: manifests are inlined with their (compressed) lock up to a stated
size, bigger or path-dependent projects are sent to the working_dir with the fix spelled
out, and bad input fails before submission with the message the agent would give."""

from __future__ import annotations

import base64
import json
import os
import random
import zlib
from pathlib import Path

import pytest

from ray_pixi import PixiSpecError, pixi
from ray_pixi.driver import MAX_INLINE_BYTES
from ray_pixi.project import collect_project_files
from ray_pixi.spec import parse_runtime_env, parse_spec

MANIFEST = '[workspace]\nname = "p"\nplatforms = ["linux-64"]\n'


def project(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pixi.toml").write_text(MANIFEST)
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / "driver.py").write_text("print('hi')\n")
    return tmp_path


def inlined_lock(spec: dict) -> str:
    return zlib.decompress(base64.b64decode(spec["lock_zlib"])).decode()


def test_manifest_and_lock_are_inlined_with_the_lock_compressed(tmp_path: Path) -> None:
    project(tmp_path)
    spec = pixi(tmp_path / "pixi.toml")
    assert spec["manifest"] == "pixi.toml" and spec["manifest_content"] == MANIFEST
    assert inlined_lock(spec) == "version: 6\n"
    assert parse_spec(spec).lock_text() == "version: 6\n"


def test_the_manifest_is_read_relative_to_working_dir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project(tmp_path / "proj")
    (tmp_path / "pixi.toml").write_text("[workspace]\nname = 'the-wrong-one'\n")
    monkeypatch.chdir(tmp_path)
    spec = pixi("pixi.toml", working_dir="proj", locked=False)
    assert spec["manifest_content"] == MANIFEST


def test_pyproject_manifests_keep_their_name(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pixi.workspace]\n")
    spec = pixi(tmp_path / "pyproject.toml", locked=False)
    assert spec["manifest"] == "pyproject.toml" and "lock_zlib" not in spec


def test_a_missing_lock_fails_with_the_lock_command(tmp_path: Path) -> None:
    (tmp_path / "pixi.toml").write_text(MANIFEST)
    with pytest.raises(PixiSpecError, match=r"Run `pixi lock --manifest-path .*pixi.toml`"):
        pixi(tmp_path / "pixi.toml")


def test_a_missing_manifest_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PixiSpecError, match="could not find the manifest .*nope.toml"):
        pixi(tmp_path / "nope.toml")


def test_a_lock_too_big_to_inline_is_refused_with_the_project_route(tmp_path: Path) -> None:
    project(tmp_path)
    rng = random.Random(0)  # sha256-like hex does not compress much, as in real locks
    lines = [f"- url: https://conda.anaconda.org/x/p{i}.conda\n  sha256: "
             f"{rng.getrandbits(256):064x}\n" for i in range(3000)]
    (tmp_path / "pixi.lock").write_text("version: 6\npackages:\n" + "".join(lines))
    with pytest.raises(PixiSpecError) as e:
        pixi(tmp_path / "pixi.toml")
    text = str(e.value)
    assert f"more than the {MAX_INLINE_BYTES // 1024} KiB" in text
    assert "pixi('" in text and "include=[])" in text and "'working_dir'" in text
    # The route it names works: project mode sends only the manifest's path.
    routed = pixi("pixi.toml", include=[], working_dir=tmp_path)
    assert routed == {"environment": "default", "manifest": "pixi.toml", "include": []}
    assert len(json.dumps(routed)) < 200


def test_a_typical_lock_inlines_well_under_the_limit(tmp_path: Path) -> None:
    project(tmp_path)
    rng = random.Random(1)
    lines = [f"- url: https://conda.anaconda.org/conda-forge/linux-64/p{i}-1.0-h0.conda\n"
             f"  sha256: {rng.getrandbits(256):064x}\n  md5: {rng.getrandbits(128):032x}\n"
             f"  depends:\n  - libgcc >=13\n  - python >=3.11,<3.12.0a0\n" for i in range(120)]
    (tmp_path / "pixi.lock").write_text("version: 6\npackages:\n" + "".join(lines))
    raw = (tmp_path / "pixi.lock").stat().st_size
    spec = pixi(tmp_path / "pixi.toml")
    assert len(json.dumps(spec)) < raw / 2 < MAX_INLINE_BYTES


def test_local_path_dependencies_are_refused_for_an_inlined_manifest(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "proj"\n[tool.pixi.workspace]\nchannels = ["conda-forge"]\n'
        '[tool.pixi.pypi-dependencies]\nproj = { path = ".", editable = true }\n')
    with pytest.raises(PixiSpecError) as e:
        pixi(tmp_path / "pyproject.toml", locked=False)
    assert "tool.pixi.pypi-dependencies.proj" in str(e.value)
    assert "include=[" in str(e.value)


def test_include_without_a_manifest_is_refused() -> None:
    with pytest.raises(PixiSpecError, match=r"\['include'\] selects files of a manifest"):
        pixi(pypi_dependencies={"six": "*"}, include=["src/**"])


def test_project_mode_sends_the_globs_not_the_files(tmp_path: Path) -> None:
    project(tmp_path)
    spec = pixi("pixi.toml", include=["src/**"], working_dir=tmp_path)
    assert spec == {"environment": "default", "manifest": "pixi.toml", "include": ["src/**"]}
    parse_runtime_env({"working_dir": str(tmp_path), "pixi": spec})


def test_project_mode_checks_the_lock_is_there(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / "pixi.lock").unlink()
    with pytest.raises(PixiSpecError, match="'pixi.lock' is missing from the working_dir"):
        pixi("pixi.toml", include=[], working_dir=tmp_path)


def test_on_the_node_a_file_resolving_outside_the_working_dir_is_refused(
    tmp_path: Path,
) -> None:
    """Ray's upload follows symlinks, so the working_dir a node downloads holds none: one
    that points out of it is not Ray's and is not trusted."""
    root = project(tmp_path / "proj")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "src" / "leak")
    spec = parse_spec({"manifest": "pixi.toml", "include": ["src/**"]})
    with pytest.raises(PixiSpecError, match="resolves outside the working_dir"):
        collect_project_files(root, spec)
    # On the driver the symlink is fine: Ray uploads what it points to.
    assert pixi("pixi.toml", include=["src/**"], working_dir=root)["include"] == ["src/**"]


def test_a_manifest_outside_the_working_dir_is_refused(tmp_path: Path) -> None:
    project(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(PixiSpecError, match="is outside the working_dir"):
        pixi(tmp_path / "a" / "pixi.toml", include=["src/**"], working_dir=tmp_path / "b")


@pytest.mark.parametrize("kwargs", [
    {"pypi_dependencies": {"six": 5}},
    {"dependencies": {"python": "3.11"}, "platforms": ["linux64"]},
    {"channels": "conda-forge", "dependencies": {}},
    {"pypi_dependencies": {"six": "*"}, "pixi_install_options": ["--platform", "osx-64"]},
])
def test_driver_and_agent_give_the_same_message(kwargs: dict) -> None:
    with pytest.raises(PixiSpecError) as on_driver:
        pixi(**kwargs)
    with pytest.raises(PixiSpecError) as in_agent:
        parse_runtime_env({"pixi": kwargs})
    assert str(on_driver.value) == str(in_agent.value)


def test_mixing_inline_and_manifest_keys_is_refused(tmp_path: Path) -> None:
    project(tmp_path)
    with pytest.raises(PixiSpecError, match="mixes inline keys"):
        pixi(tmp_path / "pixi.toml", pypi_dependencies={"six": "*"})
