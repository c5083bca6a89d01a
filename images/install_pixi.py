"""Put a verified pixi binary into the image's payload (runs in the builder stage only).

Inputs (environment, from the Dockerfile's build args):
  PIXI_VERSION       the release, e.g. 0.77.0 (required; the binary must report it)
  PIXI_FILE          a file in images/build-inputs/ to use instead of downloading: the release
                     asset pixi-<arch>-unknown-linux-musl.tar.gz, or a bare pixi binary.
                     Default: that release asset when it is in images/build-inputs/, else a
                     download
  PIXI_SHA256        adds a row to the checksum table for this build's version, architecture
                     and file (a pixi built elsewhere, a mirror's re-pack); a row the table
                     already has must agree with it
  PIXI_RELEASES_URL  where releases are downloaded from (a mirror, for example)
  PIXI_ARCH          x86_64 or aarch64 (also amd64/arm64); default TARGETARCH (set by BuildKit
                     for each platform of a multi-platform build), else this machine's

The checksum table (images/pixi-checksums.txt, copied to /build/pixi-checksums.txt) lists the
sha256 of each release asset per architecture. The file used must match its row; a downloaded
one must also match the release's published <asset>.sha256. No row, no build.
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

INPUTS = Path("/build/inputs")
TABLE = Path("/build/pixi-checksums.txt")
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
# ELF e_machine of each architecture, to check what the file really is.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}


class BuildError(RuntimeError):
    """The build cannot get a verified pixi; the message says what to do."""


@dataclass(frozen=True)
class Row:
    version: str
    arch: str
    sha256: str
    file: str
    origin: str  # where the row came from, for messages


def release_asset(arch: str) -> str:
    return f"pixi-{arch}-unknown-linux-musl.tar.gz"


def build_arch(env: Mapping[str, str], machine: str) -> str:
    """The architecture this build is for: PIXI_ARCH, else BuildKit's TARGETARCH, else the
    machine the builder stage runs on (under emulation, the target's)."""
    for name in ("PIXI_ARCH", "TARGETARCH"):
        value = env.get(name, "").strip()
        if value:
            if value not in ARCHES:
                raise BuildError(
                    f"{name}={value!r}: pixi ships Linux releases for x86_64 (amd64) and "
                    "aarch64 (arm64) only"
                )
            return ARCHES[value]
    if machine not in ARCHES:
        raise BuildError(f"no pixi Linux release for architecture {machine!r}; set PIXI_ARCH")
    return ARCHES[machine]


def parse_table(text: str, origin: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 4 or not re.fullmatch(r"[0-9a-f]{64}", fields[2]) or (
            fields[1] not in ARCHES
        ):
            raise BuildError(
                f"{origin} line {number}: expected '<version> <arch> <sha256> <file>', got "
                f"{line.strip()!r}"
            )
        rows.append(Row(fields[0], ARCHES[fields[1]], fields[2], fields[3], f"{origin}:{number}"))
    return rows


def expected_sha256(rows: list[Row], version: str, arch: str, file: str) -> Row:
    """The one sha256 the table has for this file; rows that disagree are an error."""
    matching = [r for r in rows if (r.version, r.arch, r.file) == (version, arch, file)]
    if not matching:
        raise BuildError(
            f"no checksum for {file} (pixi {version}, {arch}) in images/pixi-checksums.txt: add "
            f"its row there, or pass --build-arg PIXI_SHA256=<sha256 of {file}>"
        )
    values = {r.sha256 for r in matching}
    if len(values) > 1:
        raise BuildError(
            f"conflicting checksums for {file} (pixi {version}, {arch}): "
            + "; ".join(f"{r.sha256} ({r.origin})" for r in matching)
        )
    return matching[0]


def fetch(url: str) -> bytes:
    cafile = os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile if cafile else None)
    print(f"install_pixi: downloading {url}")
    try:
        with urllib.request.urlopen(url, context=context, timeout=120) as response:  # noqa: S310
            return bytes(response.read())
    except OSError as error:
        raise BuildError(
            f"cannot download {url}: {error}. For an air-gapped build put the release file in "
            "images/build-inputs/ (its name in images/pixi-checksums.txt is enough), or pass "
            "--build-arg PIXI_FILE=<name> --build-arg PIXI_SHA256=<sha256>."
        ) from None


def published_sha256(text: str, asset: str) -> str:
    # Either "<hex>" or "<hex>  <asset>" (sha256sum format).
    match = re.search(r"\b([0-9a-fA-F]{64})\b", text)
    if match is None:
        raise BuildError(f"the published checksum for {asset} has no sha256 in it: {text[:200]!r}")
    return match.group(1).lower()


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
    raise BuildError(f"{origin} is an archive without a 'pixi' file in it")


def elf_arch(binary: bytes) -> str | None:
    if len(binary) < 20 or binary[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(binary[18:20], "little" if binary[5] == 1 else "big")
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def install(env: Mapping[str, str], target: Path, machine: str, inputs: Path = INPUTS,
            table: Path = TABLE) -> str:
    """Verify and write pixi to `target`; return what was installed (for the build log)."""
    version = env.get("PIXI_VERSION", "").strip().removeprefix("v")
    extra = env.get("PIXI_SHA256", "").strip().lower()
    local = env.get("PIXI_FILE", "").strip()
    base_url = env.get("PIXI_RELEASES_URL", "").strip().rstrip("/")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise BuildError(f"PIXI_VERSION must be a release such as 0.77.0, got {version!r}")
    if extra and not re.fullmatch(r"[0-9a-f]{64}", extra):
        raise BuildError(f"PIXI_SHA256 must be 64 hex digits, got {extra!r}")
    arch = build_arch(env, machine)
    asset = release_asset(arch)
    if local and (Path(local).name != local or not (inputs / local).is_file()):
        raise BuildError(f"PIXI_FILE={local!r}: put that file in images/build-inputs/ (name only)")
    if not local and (inputs / asset).is_file():
        local = asset
    name = local or asset

    rows = parse_table(table.read_text(), "images/pixi-checksums.txt") if table.is_file() else []
    if extra:
        rows.append(Row(version, arch, extra, name, "--build-arg PIXI_SHA256"))
    row = expected_sha256(rows, version, arch, name)

    if local:
        data = (inputs / local).read_bytes()
        origin = str(inputs / local)
    else:
        url = f"{base_url}/v{version}/{asset}"
        published = published_sha256(fetch(url + ".sha256").decode(errors="replace"), asset)
        if published != row.sha256:
            raise BuildError(
                f"the release publishes {published} for {asset}, but {row.origin} says "
                f"{row.sha256}: check which is right before building"
            )
        data = fetch(url)
        origin = url
    actual = hashlib.sha256(data).hexdigest()
    if actual != row.sha256:
        raise BuildError(f"sha256 mismatch for {origin}: expected {row.sha256} ({row.origin}), "
                         f"got {actual}")
    binary = extract(data, origin)
    built_for = elf_arch(binary)
    if built_for is not None and built_for != arch:
        raise BuildError(f"{origin} holds a pixi for {built_for}, but this build is for {arch}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(binary)
    target.chmod(0o755)
    try:
        shown = subprocess.run(  # noqa: S603
            [str(target), "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"{target} --version failed: {error}") from None
    if shown != f"pixi {version}":
        raise BuildError(f"the pixi file reports {shown!r}, but PIXI_VERSION is {version}")
    return f"{shown} for {arch} at {target}, sha256 {actual} OK ({row.origin}) from {origin}"


def main() -> None:
    try:
        done = install(os.environ, Path(sys.argv[1]), platform.machine())
    except BuildError as error:
        print(f"install_pixi: ERROR: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"install_pixi: {done}")


if __name__ == "__main__":
    main()
