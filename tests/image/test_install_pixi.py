"""images/install_pixi.py, the builder's pixi step, without Docker: the per-architecture
checksum table, the build's architecture, and a build arg that adds a row (the tests' own
pixi, built from source, is no release asset). The Docker build runs it for real in
test_image_build.py."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from realpixi.find import SHARED_PIXI
from support import REPO

spec = importlib.util.spec_from_file_location("install_pixi", REPO / "images" / "install_pixi.py")
assert spec is not None and spec.loader is not None
install_pixi = importlib.util.module_from_spec(spec)
sys.modules["install_pixi"] = install_pixi  # its dataclasses look their module up
spec.loader.exec_module(install_pixi)
TABLE = REPO / "images" / "pixi-checksums.txt"


def test_the_table_has_a_row_per_architecture_for_the_default_release():
    rows = install_pixi.parse_table(TABLE.read_text(), "table")
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    default = next(line.split("=")[1] for line in dockerfile.splitlines()
                   if line.startswith("ARG PIXI_VERSION="))  # fmt: skip
    assert {(r.arch, r.file) for r in rows if r.version == default} == {
        ("x86_64", "pixi-x86_64-unknown-linux-musl.tar.gz"),
        ("aarch64", "pixi-aarch64-unknown-linux-musl.tar.gz"),
    }


@pytest.mark.parametrize(
    ("env", "machine", "arch"),
    [({}, "x86_64", "x86_64"), ({}, "aarch64", "aarch64"), ({"TARGETARCH": "arm64"}, "x86_64",
     "aarch64"), ({"TARGETARCH": "amd64"}, "aarch64", "x86_64"),
     ({"PIXI_ARCH": "aarch64", "TARGETARCH": "amd64"}, "x86_64", "aarch64")],
)  # fmt: skip
def test_the_builds_architecture(env, machine, arch):
    assert install_pixi.build_arch(env, machine) == arch


def test_an_architecture_pixi_does_not_ship_is_refused():
    with pytest.raises(install_pixi.BuildError, match="no pixi Linux release for .*riscv64"):
        install_pixi.build_arch({}, "riscv64")
    with pytest.raises(install_pixi.BuildError, match="TARGETARCH='s390x'"):
        install_pixi.build_arch({"TARGETARCH": "s390x"}, "x86_64")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    if not SHARED_PIXI.is_file():
        pytest.skip(f"no real pixi at {SHARED_PIXI}")
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy2(SHARED_PIXI, folder / "pixi")
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_tests_pixi_is_accepted_through_a_row_the_build_arg_adds(inputs, tmp_path):
    env = {"PIXI_VERSION": "0.77.0", "PIXI_FILE": "pixi", "PIXI_SHA256": _sha(inputs / "pixi")}
    done = install_pixi.install(env, tmp_path / "out" / "pixi", "x86_64", inputs, TABLE)
    assert "pixi 0.77.0 for x86_64" in done and "--build-arg PIXI_SHA256" in done
    assert _sha(tmp_path / "out" / "pixi") == _sha(inputs / "pixi")


def test_a_file_without_a_row_is_refused_with_the_fix(inputs, tmp_path):
    env = {"PIXI_VERSION": "0.77.0", "PIXI_FILE": "pixi"}
    with pytest.raises(install_pixi.BuildError,
                       match="no checksum for pixi .*--build-arg PIXI_SHA256"):  # fmt: skip
        install_pixi.install(env, tmp_path / "pixi", "x86_64", inputs, TABLE)


def test_the_release_asset_is_checked_against_its_table_row(inputs, tmp_path):
    """A file named as the release asset must match the table's published sha256, whatever
    the build arg says: the tests' source build is no release, so both are refused."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(inputs / "pixi", arcname="pixi")
    asset = inputs / "pixi-x86_64-unknown-linux-musl.tar.gz"
    asset.write_bytes(buffer.getvalue())
    env = {"PIXI_VERSION": "0.77.0"}  # found in build-inputs without PIXI_FILE
    with pytest.raises(install_pixi.BuildError, match=r"sha256 mismatch for .*expected bff2f77e"):
        install_pixi.install(env, tmp_path / "pixi", "x86_64", inputs, TABLE)
    env["PIXI_SHA256"] = _sha(asset)
    with pytest.raises(install_pixi.BuildError, match="conflicting checksums"):
        install_pixi.install(env, tmp_path / "pixi", "x86_64", inputs, TABLE)


def test_a_pixi_of_another_architecture_is_refused(inputs, tmp_path):
    env = {"PIXI_VERSION": "0.77.0", "PIXI_FILE": "pixi", "PIXI_SHA256": _sha(inputs / "pixi"),
           "PIXI_ARCH": "arm64"}  # fmt: skip
    with pytest.raises(install_pixi.BuildError, match="holds a pixi for x86_64.*for aarch64"):
        install_pixi.install(env, tmp_path / "pixi", "x86_64", inputs, TABLE)


def test_a_bad_table_line_is_an_error_naming_it(tmp_path):
    with pytest.raises(install_pixi.BuildError, match="table line 2: expected"):
        install_pixi.parse_table("# comment\n0.77.0 x86_64 nothex pixi\n", "table")
