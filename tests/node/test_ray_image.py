"""The node tier's Ray image: what a Ray Pod relies on, nothing of ray-pixi or the build host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest

from node.images import HOST_CA_BUNDLE, PYTHON_PREFIX_IN_IMAGE, ray_image_with

pytestmark = pytest.mark.docker

_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def run(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """As a restricted Pod runs it: no network, read-only root, no capabilities."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", image, *command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def layers(image: str) -> list[str]:
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return list(json.loads(inspected.stdout))


def host_only_certificates(image: str) -> list[str]:
    """Certificates of the build host's bundle (e.g. a TLS-intercepting proxy's) that the
    image's own system bundle lacks: these must appear nowhere in the image."""
    if not HOST_CA_BUNDLE.is_file():
        return []
    theirs = set(_CERT.findall(run(image, "cat", "/etc/ssl/certs/ca-certificates.crt").stdout))
    return sorted(set(_CERT.findall(HOST_CA_BUNDLE.read_text())) - theirs)


def assert_no_host_certificates(image: str) -> None:
    for cert in host_only_certificates(image):
        line = cert.splitlines()[1]  # the first base64 line identifies the certificate
        found = run(image, "grep", "-rlF", "--exclude-dir=proc", "--exclude-dir=sys", line, "/")
        assert found.stdout.strip() == "", f"a build host certificate is in {found.stdout}"


def test_ray_image_has_this_python_and_ray_as_a_non_root_user(ray_image: str) -> None:
    (config,) = json.loads(
        subprocess.run(["docker", "image", "inspect", ray_image], capture_output=True,
                       text=True, check=True).stdout
    )  # fmt: skip
    assert config["Config"]["User"] == "1000:100"
    probe = run(
        ray_image,
        "python",
        "-c",
        "import os, sys, ray; print(os.getuid(), os.getgid(), os.environ['HOME'], sys.prefix, "
        "'.'.join(map(str, sys.version_info[:3])), ray.__version__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [
        "1000", "100", "/home/ray", PYTHON_PREFIX_IN_IMAGE,
        ".".join(map(str, sys.version_info[:3])), metadata.version("ray"),
    ]  # fmt: skip
    # The standard library's C extensions find their Debian libraries in the minimal base.
    libraries = run(ray_image, "python", "-c", "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid")
    assert libraries.returncode == 0, libraries.stderr
    ray_cli = run(ray_image, "bash", "-c", "command -v ray && ray --version")
    assert ray_cli.returncode == 0, ray_cli.stderr
    assert ray_cli.stdout.split()[0] == f"{PYTHON_PREFIX_IN_IMAGE}/bin/ray"


def test_ray_image_holds_nothing_of_ray_pixi_or_the_build_host(ray_image: str) -> None:
    plugin = run(ray_image, "python", "-c", "import ray_pixi")
    assert plugin.returncode != 0 and "No module named 'ray_pixi'" in plugin.stderr
    leftovers = run(ray_image, "bash", "-c", "ls -d /build /tmp/inputs 2>/dev/null; true")
    assert leftovers.stdout == ""
    assert_no_host_certificates(ray_image)


def test_a_thin_layer_changes_one_requirement(ray_image: str) -> None:
    """ray_image_with: the failure-case layer (here pydantic 1) over the same Ray image."""
    layered = ray_image_with("pydantic<2", log=lambda _: None)
    assert layered.startswith(f"{ray_image}-pydantic-lt2-")
    probe = run(
        layered, "python", "-c", "import pydantic, ray; print(pydantic.VERSION[0], ray.__version__)"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["1", metadata.version("ray")]
    assert_no_host_certificates(layered)
    # A layer over the Ray image, not a second copy of it.
    base, over = (layers(image) for image in (ray_image, layered))
    assert over[: len(base)] == base and len(over) > len(base)


def test_image_tag_follows_its_inputs(ray_image: str) -> None:
    """The same inputs give the same tag (found, not rebuilt); another Ray version another."""
    from node import images

    python = images.PythonSource.current()
    ray = images.ray_version()
    assert images.ray_image_tag(python, ray) == ray_image
    assert images.ray_image_tag(python, "0.0.1") != ray_image
