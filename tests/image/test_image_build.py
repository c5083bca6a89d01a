"""images/Dockerfile built for real: the air-gapped pixi path, the payload, and who can import it.

Needs a Docker daemon and the local base image that .ci/setup-docker makes (no image registry is
reachable on the build machines); skips with the reason otherwise. The image is the one the
node tests run (`node.images.ensure_operator_image`, built once per checkout): its pixi is
the real pixi the tests use (`../shared/pixi/pixi`, checked against its sha256), given as an
air-gapped build gives it (PIXI_FILE), its non-release checksum added to the table with
PIXI_SHA256; the Python packages come from PyPI (with this machine's CA certificates, kept out
of the final image). amd64 only: the same Dockerfile builds arm64 (its row is in the table),
but this machine cannot run one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.images import docker_unavailable
from support import REPO, persistent_cache, session_pixi

pytestmark = pytest.mark.docker

BASE_IMAGE = "ray-pixi-test-base:bookworm"
PIXI_VERSION = "0.77.0"  # what the real pixi reports
PAYLOAD = "/ray-pixi/payloads/0.2.0-0123456789ab"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYENV_VERSIONS = Path.home() / ".pyenv" / "versions"


def _docker(
    *args: str, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def build_context(root: Path, pixi_file: Path) -> Path:
    """What the Dockerfile reads from a checkout, plus the air-gapped inputs."""
    ctx = root / "context"
    ctx.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, ctx / name)
    shutil.copytree(REPO / "src", ctx / "src", ignore=ignore)
    (ctx / "operator").mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / "operator" / name, ctx / "operator" / name)
    shutil.copytree(REPO / "operator" / "src", ctx / "operator" / "src", ignore=ignore)
    (ctx / "images" / "build-inputs").mkdir(parents=True)
    for name in ("Dockerfile", "install_pixi.py", "pixi-checksums.txt"):
        shutil.copy2(REPO / "images" / name, ctx / "images" / name)
    shutil.copy2(pixi_file, ctx / "images" / "build-inputs" / "pixi")
    if HOST_CA_BUNDLE.is_file():  # TLS to the registries is intercepted on the build machines
        shutil.copy2(HOST_CA_BUNDLE, ctx / "images" / "build-inputs" / "host-ca.crt")
    return ctx


def docker_build(ctx: Path, tag: str, **build_args: str) -> subprocess.CompletedProcess[str]:
    args = [
        "build",
        "--force-rm",
        "--network",
        "host",
        "-f",
        "images/Dockerfile",
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
    ]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    return subprocess.run(["docker", *args, str(ctx)], capture_output=True, text=True, timeout=840)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    session_pixi()
    from node.images import ensure_operator_image

    yield ensure_operator_image()


@pytest.fixture(scope="module")
def context_dir(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return build_context(tmp_path_factory.mktemp("image-bad"), session_pixi())


def run(
    image: str,
    *command: str,
    volume: Path | None = None,
    user: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`docker run` as a restricted pod runs it: read-only root, no capabilities."""
    args = [
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
    if volume is not None:
        args += ["-v", f"{volume}:/ray-pixi"]
    if user is not None:
        args += ["--user", user]
    return _docker(*args, image, *command, timeout=timeout)


# --- the image ---------------------------------------------------------------------------------


def test_image_is_non_root_small_and_free_of_build_inputs(image):
    (config,) = json.loads(_docker("image", "inspect", image, check=True).stdout)
    assert config["Config"]["User"] == "65532:65532"
    size_mb = config["Size"] / 1e6
    base_mb = (
        json.loads(_docker("image", "inspect", BASE_IMAGE, check=True).stdout)[0]["Size"] / 1e6
    )
    pixi_mb = session_pixi().stat().st_size / 1e6  # 112 MB: a source build, not a release's
    print(
        f"image {image}: {size_mb:.0f} MB ({size_mb - base_mb:.0f} MB over the base image, "
        f"{pixi_mb:.0f} MB of it pixi)"
    )
    assert size_mb - base_mb - pixi_mb < 120, "the layers over the base image grew"
    probe = run(
        image,
        "sh",
        "-c",
        "id -u; test ! -e /build && echo no-build-dir; "
        "python -m pip --version >/dev/null 2>&1 || echo no-pip; "
        "grep -rl 'BEGIN CERTIFICATE' /opt/ray-pixi 2>/dev/null | grep -v certifi || "
        "echo no-extra-ca",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["65532", "no-build-dir", "no-pip", "no-extra-ca"]


def test_operator_entry_point_runs_on_a_read_only_root(image):
    checked = run(
        image, "python", "-c", "import ray_pixi_operator.handlers, kopf, kubernetes.client"
    )
    assert checked.returncode == 0, checked.stderr
    # Without its settings it stops at once with the documented message (before kopf starts).
    started = run(image, "ray-pixi-operator", "run")
    assert started.returncode == 2
    assert "Invalid RAY_PIXI_PAYLOAD_IMAGE=''" in started.stderr


def test_the_payloads_pixi_runs_in_the_image_and_is_the_file_the_build_was_given(image):
    version = run(image, "/opt/ray-pixi/payload/bin/pixi", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"pixi {PIXI_VERSION}"
    digest = run(image, "sha256sum", "/opt/ray-pixi/payload/bin/pixi")
    assert digest.stdout.split()[0] == hashlib.sha256(session_pixi().read_bytes()).hexdigest()


def test_only_ray_pixi_is_on_the_payloads_path_with_its_vendored_toml_packages(image):
    listing = run(
        image,
        "sh",
        "-c",
        "cd /opt/ray-pixi/payload/python && ls; echo ---; ls ray_pixi/_vendor",
    )
    top, vendor = listing.stdout.split("---")
    assert [n for n in top.split() if not n.endswith(".dist-info")] == ["ray_pixi"]
    names = vendor.split()
    assert {"tomli_w", "tomli"} <= set(names)
    assert any(n.startswith("tomli_w-") and n.endswith(".dist-info") for n in names)  # license


# --- the payload ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/ray-pixi after the init container ran (an emptyDir volume: mode 0777, owned by root)."""
    volume = tmp_path_factory.mktemp("ray-pixi")
    volume.chmod(0o777)
    first = run(image, "ray-pixi-payload", "add", PAYLOAD, volume=volume)
    assert first.returncode == 0, first.stderr
    assert "for x86_64: added python, lib, bin, x86_64" in first.stdout
    return volume


def test_payload_add_is_idempotent_in_the_container(image, installed):
    again = run(image, "ray-pixi-payload", "add", PAYLOAD, volume=installed)
    assert again.returncode == 0, again.stderr
    assert "added nothing; already present: python, lib, bin, x86_64" in again.stdout


def test_payload_layout_and_permissions(installed):
    payload = installed / PAYLOAD.removeprefix("/ray-pixi/")
    pixi = payload / "x86_64" / "pixi"
    assert os.access(pixi, os.X_OK)
    # The very file the air-gapped build was given (and checked against its sha256).
    assert hashlib.sha256(pixi.read_bytes()).digest() == (
        hashlib.sha256(session_pixi().read_bytes()).digest()
    )
    version = subprocess.run(
        [payload / "bin" / "pixi", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"pixi {PIXI_VERSION}"
    top = sorted(p.name for p in (payload / "python").iterdir() if not p.name.startswith("."))
    assert [n for n in top if not n.endswith(".dist-info")] == ["ray_pixi"]
    assert not list((payload / "python").rglob("*.so")) and not list(
        (payload / "python").rglob("*.pyc")
    )
    for shared in ("store", "pixi-cache", "payloads"):
        assert (installed / shared).stat().st_mode & 0o7777 == 0o1777


def test_ray_user_can_use_the_payload_and_write_the_store(image, installed):
    """The Ray container runs as uid 1000, not as the init container's 65532; its Python
    (the image's Debian python3, not a venv) finds ray_pixi through the user site, and
    ray_pixi writes TOML with its vendored tomli-w (none is installed there)."""
    code = (
        "import ray_pixi.errors; from ray_pixi.tomlread import vendored; "
        "print(vendored('tomli_w').dumps({'a': 1}).strip())"
    )
    probe = run(
        image,
        "sh",
        "-c",
        f"set -e; {PAYLOAD}/bin/pixi --version; "
        f"PYTHONUSERBASE={PAYLOAD} /usr/bin/python3 -c {shlex.quote(code)}; "
        "/usr/bin/python3 -c 'import tomli_w' 2>/dev/null && echo tomli_w-on-path || "
        "echo no-tomli_w-on-path; "
        "mkdir /ray-pixi/store/env-a /ray-pixi/pixi-cache/pkgs; "
        f"touch {PAYLOAD}/python/x 2>/dev/null && echo payload-writable || "
        "echo payload-read-only",
        volume=installed,
        user="1000:100",
    )
    assert probe.returncode == 0, probe.stderr
    assert "a = 1" in probe.stdout
    assert probe.stdout.split()[-2:] == ["no-tomli_w-on-path", "payload-read-only"]


def _image_python(image: str) -> tuple[int, int]:
    out = run(image, "python", "-c", "import sys; print(*sys.version_info[:2])")
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _other_pythons(image_version: tuple[int, int]) -> list[Path]:
    found = []
    for minor in (10, 13, 12):  # the oldest and newest Ray supports first
        if (3, minor) == image_version:
            continue
        for candidate in sorted(PYENV_VERSIONS.glob(f"3.{minor}.*/bin/python3")):
            found.append(candidate)
            break
    return found


def _ray_like_venv(python: Path) -> Path:
    """A venv of `python` with what a Ray image has that ray_pixi imports eagerly (pydantic)."""
    version = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = persistent_cache("image-test-pythons") / f"py{version}"
    marker = venv / ".ready"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", "pydantic>=2.5"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if pip.returncode != 0:
            pytest.skip(f"cannot install pydantic for Python {version}: {pip.stderr[-300:]}")
        marker.touch()
    return venv / "bin" / "python"


@pytest.mark.parametrize("which", [0, 1], ids=["oldest-other-python", "newest-other-python"])
def test_payload_imports_with_a_different_python_than_the_image(image, installed, which):
    image_version = _image_python(image)
    pythons = _other_pythons(image_version)
    if len(pythons) <= which:
        pytest.skip(
            f"no second Python other than the image's {image_version} under {PYENV_VERSIONS}"
        )
    python = _ray_like_venv(pythons[which])
    payload_python = installed / PAYLOAD.removeprefix("/ray-pixi/") / "python"
    code = (
        "import sys, pathlib, ray_pixi\n"
        "from ray_pixi import pixi, PixiSpec\n"
        "from ray_pixi.manifest import tomli_w  # the vendored copy: none installed here\n"
        "assert tomli_w.dumps({'name': 'demo'}) == 'name = \"demo\"\\n'\n"
        # Every module of the plugin parses under this Python (some import ray lazily).
        "for path in pathlib.Path(ray_pixi.__file__).parent.rglob('*.py'):\n"
        "    compile(path.read_text(), str(path), 'exec')\n"
        "print(sys.version_info[0], sys.version_info[1], ray_pixi.__file__)\n"
    )
    result = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PYTHONPATH": str(payload_python),
            "PATH": os.environ["PATH"],
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )
    assert result.returncode == 0, result.stderr
    major, minor, where = result.stdout.split()
    assert (int(major), int(minor)) != image_version
    assert Path(where).resolve().is_relative_to(payload_python.resolve())


# --- the build's checks on the pixi file ---------------------------------------------------------


def test_build_fails_when_the_pixi_file_does_not_match_its_sha256(context_dir):
    result = docker_build(
        context_dir,
        "ray-pixi-test-build-fails:bad-sha",
        PIXI_FILE="pixi",
        PIXI_SHA256="0" * 64,
        PIXI_VERSION=PIXI_VERSION,
    )
    assert result.returncode != 0
    assert re.search(
        r"sha256 mismatch for /build/inputs/pixi: expected 0{64} \(--build-arg PIXI_SHA256\), "
        r"got [0-9a-f]{64}",
        result.stdout + result.stderr,
    )


def test_build_refuses_a_local_pixi_file_the_table_does_not_list(context_dir):
    result = docker_build(
        context_dir, "ray-pixi-test-build-fails:no-sha", PIXI_FILE="pixi", PIXI_VERSION=PIXI_VERSION
    )
    assert result.returncode != 0
    assert (
        "no checksum for pixi (pixi 0.77.0, x86_64) in images/pixi-checksums.txt"
        in result.stdout + result.stderr
    )


def test_build_fails_when_the_pixi_file_is_another_version(context_dir):
    sha = hashlib.sha256(session_pixi().read_bytes()).hexdigest()
    result = docker_build(
        context_dir,
        "ray-pixi-test-build-fails:wrong-version",
        PIXI_FILE="pixi",
        PIXI_SHA256=sha,
        PIXI_VERSION="0.40.0",
    )
    assert result.returncode != 0
    assert "the pixi file reports 'pixi 0.77.0', but PIXI_VERSION is 0.40.0" in (
        result.stdout + result.stderr
    )


if __name__ == "__main__":  # pragma: no cover - `python tests/image/test_image_build.py`
    sys.exit(pytest.main([__file__, "-v"]))
