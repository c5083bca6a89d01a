"""The inline manifest pins the cluster's Python and Ray, and the environment key changes
with every input that changes the installed environment, and with nothing else."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from ray_pixi.cluster import ClusterInfo, node_platform, python_mismatch
from ray_pixi.key import build_env_key
from ray_pixi.manifest import build_inline_manifest
from ray_pixi.spec import parse_spec

CLUSTER = ClusterInfo(python_version="3.11.7", ray_version="2.60.0", platform="linux-64")


def test_inline_manifest_pins_cluster_python_and_ray() -> None:
    doc = tomllib.loads(build_inline_manifest(
        parse_spec({"pypi_dependencies": {"six": ">=1.16"}}), CLUSTER))
    assert doc["dependencies"] == {"python": "==3.11.7"}
    assert doc["pypi-dependencies"]["ray"] == {"version": "==2.60.0", "extras": ["default"]}
    assert doc["pypi-dependencies"]["six"] == ">=1.16"
    assert doc["workspace"]["platforms"] == ["linux-64"]
    assert doc["workspace"]["channels"] == ["conda-forge"]


@pytest.mark.parametrize("declared", [
    {"pypi_dependencies": {"Ray": "==2.60.0"}},
    {"dependencies": {"ray-core": "2.60.*"}},
    {"dependencies": {"ray": "*"}},
])
def test_a_declared_ray_is_left_to_the_user(declared: dict) -> None:
    doc = tomllib.loads(build_inline_manifest(parse_spec(declared), CLUSTER))
    pypi = doc.get("pypi-dependencies", {})
    assert "ray" not in pypi or declared.get("pypi_dependencies")


def test_a_conda_package_named_ray_something_is_not_ray() -> None:
    doc = tomllib.loads(build_inline_manifest(
        parse_spec({"dependencies": {"ray-pixi-test-activation": "*"}}), CLUSTER))
    assert doc["pypi-dependencies"]["ray"] == {"version": "==2.60.0", "extras": ["default"]}


def test_user_python_and_platforms_are_kept() -> None:
    doc = tomllib.loads(build_inline_manifest(parse_spec(
        {"dependencies": {"python": "3.11.*"}, "platforms": ["linux-64", "osx-arm64"],
         "channels": ["https://example.invalid/ch"]}), CLUSTER))
    assert doc["dependencies"]["python"] == "3.11.*"
    assert doc["workspace"]["platforms"] == ["linux-64", "osx-arm64"]
    assert doc["workspace"]["channels"] == ["https://example.invalid/ch"]


INLINE = parse_spec({"pypi_dependencies": {"six": "*"}})
BASE_KEY = build_env_key(INLINE, CLUSTER, "0.77.0")


@pytest.mark.parametrize("change", [
    lambda: build_env_key(parse_spec({"pypi_dependencies": {"six": "==1.16"}}), CLUSTER, "0.77.0"),
    lambda: build_env_key(parse_spec({"pypi_dependencies": {"six": "*"},
                                      "environment": "gpu"}), CLUSTER, "0.77.0"),
    lambda: build_env_key(INLINE, replace(CLUSTER, platform="linux-aarch64"), "0.77.0"),
    lambda: build_env_key(INLINE, replace(CLUSTER, python_version="3.11.8"), "0.77.0"),
    lambda: build_env_key(INLINE, replace(CLUSTER, ray_version="2.61.0"), "0.77.0"),
    lambda: build_env_key(INLINE, CLUSTER, "0.78.0"),
    lambda: build_env_key(parse_spec({"pypi_dependencies": {"six": "*"},
                                      "pixi_install_options": ["--offline"]}), CLUSTER, "0.77.0"),
], ids=["deps", "environment", "platform", "python", "ray", "pixi", "install-options"])
def test_every_env_changing_input_changes_the_key(change) -> None:
    assert change() != BASE_KEY


def test_the_same_request_has_the_same_key() -> None:
    again = build_env_key(parse_spec({"pypi_dependencies": {"six": "*"}}), CLUSTER, "0.77.0")
    assert again == BASE_KEY


def test_a_project_key_follows_the_digest_of_its_files() -> None:
    spec = parse_spec({"manifest": "pixi.toml"})
    assert build_env_key(spec, CLUSTER, "0.77.0", "a" * 64) == \
        build_env_key(spec, CLUSTER, "0.77.0", "a" * 64)
    assert build_env_key(spec, CLUSTER, "0.77.0", "a" * 64) != \
        build_env_key(spec, CLUSTER, "0.77.0", "b" * 64)
    with pytest.raises(ValueError, match="digest"):
        build_env_key(spec, CLUSTER, "0.77.0")


def test_a_lock_keys_the_same_whether_sent_compressed_or_not() -> None:
    import base64
    import zlib

    lock = "version: 6\nenvironments: {}\n"
    raw = parse_spec({"manifest": "pixi.toml", "manifest_content": "[workspace]\n",
                      "lock_content": lock})
    packed = parse_spec({"manifest": "pixi.toml", "manifest_content": "[workspace]\n",
                         "lock_zlib": base64.b64encode(zlib.compress(lock.encode())).decode()})
    assert build_env_key(raw, CLUSTER, "0.77.0") == build_env_key(packed, CLUSTER, "0.77.0")


@pytest.mark.parametrize(("system", "machine", "expected"), [
    ("linux", "x86_64", "linux-64"), ("linux", "aarch64", "linux-aarch64"),
    ("darwin", "arm64", "osx-arm64"), ("darwin", "x86_64", "osx-64"), ("win32", "AMD64", "win-64"),
])
def test_node_platform_names(system: str, machine: str, expected: str) -> None:
    assert node_platform(system, machine) == expected


def test_python_match_level_follows_ray() -> None:
    assert python_mismatch(CLUSTER, "3.11.8")
    assert not python_mismatch(replace(CLUSTER, match_level="minor"), "3.11.8")
    assert python_mismatch(replace(CLUSTER, match_level="minor"), "3.12.1")
