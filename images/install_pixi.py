"""Put a verified pixi binary into the image's payload (runs in the builder stage only).

Inputs (environment, from the Dockerfile's build args):
  PIXI_VERSION       the release, e.g. 0.77.0 (required; the binary must report it)
  PIXI_SHA256        expected sha256 of the release file (required with PIXI_FILE; optional
                     otherwise, and then checked against the published one too)
  PIXI_FILE          a file in images/build-inputs/ to use instead of downloading: the release
                     asset pixi-<arch>-unknown-linux-musl.tar.gz, or a bare pixi binary
  PIXI_RELEASES_URL  where releases are downloaded from (a mirror, for example)
  PIXI_ARCH          x86_64 or aarch64; default: this machine's

Without PIXI_FILE it downloads <url>/v<version>/pixi-<arch>-unknown-linux-musl.tar.gz and the
published <asset>.sha256. Any mismatch fails the build.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import ssl
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

INPUTS = Path("/build/inputs")
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def fail(message: str) -> None:
    print(f"install_pixi: ERROR: {message}", file=sys.stderr)
    sys.exit(1)


def fetch(url: str) -> bytes:
    cafile = os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile if cafile else None)
    print(f"install_pixi: downloading {url}")
    try:
        with urllib.request.urlopen(url, context=context, timeout=120) as response:  # noqa: S310
            return bytes(response.read())
    except OSError as error:
        fail(
            f"cannot download {url}: {error}. For an air-gapped build put the release file in "
            "images/build-inputs/ and pass --build-arg PIXI_FILE=<name> --build-arg "
            "PIXI_SHA256=<sha256>."
        )
        raise  # unreachable


def published_sha256(text: str, asset: str) -> str:
    # Either "<hex>" or "<hex>  <asset>" (sha256sum format).
    match = re.search(r"\b([0-9a-fA-F]{64})\b", text)
    if match is None:
        fail(f"the published checksum for {asset} has no sha256 in it: {text[:200]!r}")
    return match.group(1).lower()  # type: ignore[union-attr]


def extract(data: bytes, origin: str) -> bytes:
    """The pixi binary: the 'pixi' member of a release archive, or the file itself."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
    except tarfile.ReadError:
        return data  # a bare binary
    with archive:
        for member in archive.getmembers():
            if member.isfile() and Path(member.name).name == "pixi":
                handle = archive.extractfile(member)
                if handle is not None:
                    return handle.read()
    fail(f"{origin} is an archive without a 'pixi' file in it")
    raise AssertionError  # unreachable


def main() -> None:
    version = os.environ.get("PIXI_VERSION", "").strip().removeprefix("v")
    expected = os.environ.get("PIXI_SHA256", "").strip().lower()
    local = os.environ.get("PIXI_FILE", "").strip()
    base_url = os.environ.get("PIXI_RELEASES_URL", "").strip().rstrip("/")
    machine = os.environ.get("PIXI_ARCH", "").strip() or platform.machine()
    target = Path(sys.argv[1])

    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        fail(f"PIXI_VERSION must be a release such as 0.77.0, got {version!r}")
    if expected and not re.fullmatch(r"[0-9a-f]{64}", expected):
        fail(f"PIXI_SHA256 must be 64 hex digits, got {expected!r}")
    arch = ARCHES.get(machine)
    if arch is None:
        fail(f"no pixi Linux release for architecture {machine!r}; set PIXI_ARCH")
    asset = f"pixi-{arch}-unknown-linux-musl.tar.gz"

    if local:
        path = INPUTS / local
        if Path(local).name != local or not path.is_file():
            fail(f"PIXI_FILE={local!r}: put that file in images/build-inputs/ (name only)")
        if not expected:
            fail(
                "PIXI_FILE needs PIXI_SHA256: the sha256 of that file, from the release's "
                f"{asset}.sha256 (or sha256.sum)"
            )
        data = path.read_bytes()
        origin = str(path)
    else:
        url = f"{base_url}/v{version}/{asset}"
        published = published_sha256(fetch(url + ".sha256").decode(errors="replace"), asset)
        if expected and expected != published:
            fail(f"PIXI_SHA256={expected} but the release publishes {published} for {asset}")
        expected = published
        data = fetch(url)
        origin = url

    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        fail(f"sha256 mismatch for {origin}: expected {expected}, got {actual}")
    print(f"install_pixi: sha256 {actual} OK for {origin}")

    binary = extract(data, origin)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(binary)
    target.chmod(0o755)

    try:
        shown = subprocess.run(  # noqa: S603
            [str(target), "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        fail(f"{target} --version failed: {error}")
        raise  # unreachable
    if shown != f"pixi {version}":
        fail(f"the pixi file reports {shown!r}, but PIXI_VERSION is {version}")
    print(f"install_pixi: {shown} at {target}")


if __name__ == "__main__":
    main()
