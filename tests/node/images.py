"""The images the node's Pods run, built here once per machine and reused.

No image registry is reachable on the build machines, so each image is built from the
debootstrap base that .ci/setup-docker makes, and tagged by a key over everything that goes
into it (a changed input builds a new tag; an unchanged one is found and reused):

- the Ray image (`ray-pixi-test-ray:<key>`): ray-image/Dockerfile with the exact CPython the
  tests run (the interpreter behind this process, without its site-packages) and
  `ray[default]` at this process's Ray version. Nothing of ray-pixi.
- the same image at another Ray version (`ensure_ray_image(ray="2.9.3")`: a Ray the plugin
  does not support), and a thin layer over it for other failure cases (`ray_image_with`).
- the add-on's image (`ray-pixi-test-operator:<key>`): images/Dockerfile from this checkout
  with a real pixi as the air-gapped PIXI_FILE, as a cluster operator builds it.

Builds take a file lock, so a CI setup step and a test session never build one image twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "docker_setup_said",
    "docker_unavailable",
    "BASE_IMAGE",
    "ImageError",
    "PythonSource",
    "UNSUPPORTED_RAY",
    "build_ray_image",
    "ensure_operator_image",
    "ensure_ray_image",
    "ray_image_with",
    "real_pixi",
]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RAY_DOCKERFILE = HERE / "ray-image" / "Dockerfile"
BASE_IMAGE = "ray-pixi-test-base:bookworm"


DOCKER_SETUP_STATUS = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "ray-pixi"
    / "docker-setup.status"
)


def docker_setup_said() -> str:
    """What .ci/setup-docker last reported, for skip and failure messages."""
    try:
        said = DOCKER_SETUP_STATUS.read_text().strip()
    except OSError:
        return ".ci/setup-docker has not run"
    return f".ci/setup-docker said: {said}" if said else ".ci/setup-docker did not finish"


@functools.lru_cache(maxsize=1)
def docker_unavailable() -> str | None:
    """Why the docker tests cannot run here (None: the daemon and the base image are there)."""
    if shutil.which("docker") is None:
        return f"no docker CLI on PATH ({docker_setup_said()})"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"docker info timed out ({docker_setup_said()})"
    if info.returncode != 0:
        return f"Docker daemon not reachable: {info.stderr.strip()[:200]} ({docker_setup_said()})"
    found = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True)
    if found.returncode != 0:
        return f"base image {BASE_IMAGE} missing: run .ci/setup-docker ({docker_setup_said()})"
    return None
RAY_REPOSITORY = "ray-pixi-test-ray"
OPERATOR_REPOSITORY = "ray-pixi-test-operator"
PYTHON_PREFIX_IN_IMAGE = "/opt/python"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# A Ray older than the plugin supports (>= 2.10), on the same Python: the plugin's entry point
# imports there, and ray-pixi refuses to run.
UNSUPPORTED_RAY = "2.9.3"
# What the Pod's Python does not need from the source prefix: installed packages (the image
# installs its own), the test suite and the static library (build-time only).
PYTHON_EXCLUDES = ("site-packages", "test", "libpython*.a", "*.opt-1.pyc", "*.opt-2.pyc")
BUILD_TIMEOUT = 1800

Log = Callable[[str], None]


class ImageError(RuntimeError):
    """An image cannot be built; the message carries the command's tail and what to do."""


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "ray-pixi" / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag).returncode == 0


def image_id(tag: str) -> str:
    found = _docker("image", "inspect", "--format", "{{.Id}}", tag)
    if found.returncode != 0:
        raise ImageError(f"image {tag} is missing: {found.stderr.strip()}; run .ci/setup-docker")
    return found.stdout.strip()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    with (cache_dir() / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(context: Path, dockerfile: Path, tag: str, build_args: dict[str, str], log: Log) -> None:
    argv = ["build", "--force-rm", "--network", "host", "-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    built = subprocess.run(
        ["docker", *argv, str(context)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if built.returncode != 0:
        tail = "\n".join((built.stdout + built.stderr).splitlines()[-30:])
        raise ImageError(f"docker build of {tag} failed (exit {built.returncode}):\n{tail}")
    log(f"images: built {tag} in {time.monotonic() - started:.0f} s")


def _host_ca_into(inputs: Path) -> None:
    """The build host's CA bundle, for pip in a builder stage (TLS is intercepted here)."""
    inputs.mkdir(parents=True, exist_ok=True)
    if HOST_CA_BUNDLE.is_file():
        shutil.copy2(HOST_CA_BUNDLE, inputs / "host-ca.crt")


# --- the Ray image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonSource:
    """The CPython installation the image's interpreter is copied from."""

    prefix: Path
    version: str  # e.g. 3.11.7
    ldlibrary: str  # e.g. libpython3.11.so.1.0 (a shared libpython is required)

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def executable(self) -> Path:
        return self.prefix / "bin" / f"python{self.minor}"

    @classmethod
    def current(cls) -> PythonSource:
        """The interpreter behind this process (a venv's base), or $RAY_PIXI_TEST_PYTHON_PREFIX."""
        explicit = os.environ.get("RAY_PIXI_TEST_PYTHON_PREFIX")
        if explicit:
            return cls.probe(Path(explicit))
        prefix = Path(sys.base_prefix)
        ldlibrary = sysconfig.get_config_var("INSTSONAME") or ""
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            raise ImageError(
                f"the Python at {prefix} links libpython statically; the Ray image copies a "
                "shared-libpython CPython: set RAY_PIXI_TEST_PYTHON_PREFIX to one"
            )
        return cls(prefix, ".".join(map(str, sys.version_info[:3])), ldlibrary)

    @classmethod
    def probe(cls, prefix: Path) -> PythonSource:
        candidates = sorted(prefix.glob("bin/python3.[0-9]*"))
        if not candidates:
            raise ImageError(f"RAY_PIXI_TEST_PYTHON_PREFIX={prefix}: no bin/python3.X in it")
        code = (
            "import sys, sysconfig; print('.'.join(map(str, sys.version_info[:3])), "
            "sysconfig.get_config_var('INSTSONAME'), sysconfig.get_config_var('Py_ENABLE_SHARED'))"
        )
        out = subprocess.run(
            [candidates[0], "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        if out[2] != "1":
            raise ImageError(f"RAY_PIXI_TEST_PYTHON_PREFIX={prefix} links libpython statically")
        return cls(prefix, out[0], out[1])

    def fingerprint(self) -> str:
        return _key(
            self.version,
            _sha256_file(self.executable),
            _sha256_file(self.prefix / "lib" / self.ldlibrary),
        )

    def copy_into(self, target: Path) -> None:
        """bin/python3.X, lib/ (stdlib, libpython) and include/, minus PYTHON_EXCLUDES."""
        (target / "bin").mkdir(parents=True)
        shutil.copy2(self.executable, target / "bin" / self.executable.name)
        shutil.copytree(
            self.prefix / "lib",
            target / "lib",
            symlinks=True,
            ignore=shutil.ignore_patterns(*PYTHON_EXCLUDES),
        )
        include = self.prefix / "include"
        if include.is_dir():
            shutil.copytree(include, target / "include", symlinks=True)


def ray_version() -> str:
    return metadata.version("ray")


def ray_image_tag(python: PythonSource, ray: str) -> str:
    key = _key(RAY_DOCKERFILE.read_text(), image_id(BASE_IMAGE), python.fingerprint(), ray)
    return f"{RAY_REPOSITORY}:py{python.version}-ray{ray}-{key}"


def build_ray_image(python: PythonSource, ray: str, tag: str, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="ray-pixi-images-image-") as tmp:
        context = Path(tmp)
        python.copy_into(context / "python")
        _host_ca_into(context / "build-inputs")
        _build(
            context,
            RAY_DOCKERFILE,
            tag,
            {
                "BASE_IMAGE": BASE_IMAGE,
                "PYTHON_PREFIX": PYTHON_PREFIX_IN_IMAGE,
                "RAY_VERSION": ray,
            },
            log,
        )


def ensure_ray_image(log: Log = print, *, ray: str | None = None) -> str:
    """The Ray image for this machine's Python and Ray (or `ray`, another Ray version on the
    same Python: a cluster the plugin does not support); built once, then found by its tag."""
    python = PythonSource.current()
    ray = ray or ray_version()
    tag = ray_image_tag(python, ray)
    with _build_lock("ray-image"):
        if image_exists(tag):
            return tag
        log(f"images: building {tag} (CPython {python.version} from {python.prefix}, ray {ray})")
        build_ray_image(python, ray, tag, log)
    return tag


_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?[<>=!~,.0-9a-z*]*$")


def ray_image_with(requirement: str, log: Log = print) -> str:
    """The Ray image plus one pip requirement (e.g. `pydantic<2`): a thin layer for failures.

    The requirement is downloaded in a builder stage (with the host's CA bundle) and installed
    from those wheels alone in the final one, so no certificate reaches the image.
    """
    if not _REQUIREMENT.match(requirement):
        raise ImageError(f"ray_image_with({requirement!r}): give one pip requirement like 'x<2'")
    base = ensure_ray_image(log)
    slug = requirement.lower()
    for operator, word in (("<=", "le"), (">=", "ge"), ("==", "eq"), ("!=", "ne"), ("~=", "compat"),
                           ("<", "lt"), (">", "gt")):  # fmt: skip
        slug = slug.replace(operator, f"-{word}")
    slug = re.sub(r"[^a-z0-9.]+", "-", slug).strip("-")
    tag = f"{base}-{slug}-{_key(image_id(base), requirement)[:8]}"
    dockerfile = (
        "ARG RAY_IMAGE\n"
        "FROM ${RAY_IMAGE} AS wheels\n"
        "COPY build-inputs/ /tmp/inputs/\n"
        "ARG REQUIREMENT\n"
        "RUN cert=/etc/ssl/certs/ca-certificates.crt; "
        "if [ -s /tmp/inputs/host-ca.crt ]; then cert=/tmp/inputs/host-ca.crt; fi; "
        'PIP_CERT="$cert" python -m pip download -q -d /tmp/wheels "$REQUIREMENT"\n'
        "FROM ${RAY_IMAGE}\n"
        "ARG REQUIREMENT\n"
        "COPY --from=wheels /tmp/wheels/ /tmp/wheels/\n"
        "USER root\n"
        'RUN python -m pip install -q --no-index --find-links /tmp/wheels "$REQUIREMENT" '
        "&& rm -rf /tmp/wheels\n"
        "USER 1000:100\n"
    )
    with _build_lock("ray-image"):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="ray-pixi-images-layer-") as tmp:
            context = Path(tmp)
            (context / "Dockerfile").write_text(dockerfile)
            _host_ca_into(context / "build-inputs")
            (context / "build-inputs" / "host-ca.crt").touch()  # COPY needs the folder
            _build(
                context,
                context / "Dockerfile",
                tag,
                {"RAY_IMAGE": base, "REQUIREMENT": requirement},
                log,
            )
    return tag


# --- the add-on's image -------------------------------------------------------------------------


def real_pixi() -> tuple[Path, str]:
    """A real pixi and its sha256: $RAY_PIXI_TEST_PIXI, else ../shared/pixi/pixi, checked."""
    explicit = os.environ.get("RAY_PIXI_TEST_PIXI")
    if explicit:
        path = Path(explicit)
        return path, _sha256_file(path)
    path = REPO.parent / "shared" / "pixi" / "pixi"
    sums = path.with_name("pixi.sha256")
    if not path.is_file() or not sums.is_file():
        raise ImageError(f"no real pixi at {path} (with pixi.sha256): set RAY_PIXI_TEST_PIXI")
    expected = sums.read_text().split()[0]
    actual = _sha256_file(path)
    if actual != expected:
        raise ImageError(f"{path} has sha256 {actual}, but {sums} says {expected}")
    return path, actual


def _pixi_version(pixi: Path) -> str:
    out = subprocess.run([pixi, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.fullmatch(r"pixi (\d+\.\d+\.\d+)\s*", out)
    if match is None:
        raise ImageError(f"{pixi} --version printed {out!r}, not 'pixi X.Y.Z'")
    return match.group(1)


# What images/Dockerfile reads from a checkout.
_OPERATOR_INPUTS = (
    "pyproject.toml",
    "README.md",
    "src",
    "operator/pyproject.toml",
    "operator/README.md",
    "operator/src",
    "images/Dockerfile",
    "images/install_pixi.py",
    "images/pixi-checksums.txt",
)


def _operator_files() -> list[Path]:
    files: list[Path] = []
    for name in _OPERATOR_INPUTS:
        path = REPO / name
        if path.is_dir():
            files += [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
        else:
            files.append(path)
    return files


def ensure_operator_image(log: Log = print) -> str:
    """images/Dockerfile from this checkout, with a real pixi as its air-gapped PIXI_FILE."""
    pixi, pixi_sha = real_pixi()
    files = _operator_files()
    listing = json.dumps(
        [[str(p.relative_to(REPO)), _sha256_file(p)] for p in files], separators=(",", ":")
    )
    tag = f"{OPERATOR_REPOSITORY}:{_key(listing, pixi_sha, image_id(BASE_IMAGE))}"
    with _build_lock("operator-image"):
        if image_exists(tag):
            return tag
        log(f"images: building {tag} from images/Dockerfile with pixi {pixi}")
        with tempfile.TemporaryDirectory(prefix="ray-pixi-test-operator-") as tmp:
            context = Path(tmp)
            for path in files:
                target = context / path.relative_to(REPO)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            inputs = context / "images" / "build-inputs"
            _host_ca_into(inputs)
            shutil.copy2(pixi, inputs / "pixi")
            _build(
                context,
                context / "images" / "Dockerfile",
                tag,
                {
                    "BASE_IMAGE": BASE_IMAGE,
                    "PIXI_FILE": "pixi",
                    "PIXI_SHA256": pixi_sha,
                    "PIXI_VERSION": _pixi_version(pixi),
                },
                log,
            )
    return tag


# The names under which the lifecycle tests and bench/operator-scale install the chart: a
# registry's tags of two releases (0.2.0 is the chart's appVersion), each the add-on's image
# of this checkout.
CHART_IMAGE = "registry.example.com/ml/ray-pixi"
CHART_TAGS = ("0.1.0", "0.2.0")


def tag_chart_images(operator_image: str) -> list[str]:
    """`docker tag` the add-on's image as `CHART_IMAGE:<tag>` for each of `CHART_TAGS`, so a
    node that imports them runs a chart installed with those names (nothing is pulled)."""
    tags = [f"{CHART_IMAGE}:{tag}" for tag in CHART_TAGS]
    for tag in tags:
        done = _docker("tag", operator_image, tag, timeout=60)
        if done.returncode != 0:
            raise ImageError(f"docker tag {operator_image} {tag}: {done.stderr.strip()}")
    return tags
