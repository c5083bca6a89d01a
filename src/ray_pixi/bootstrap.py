"""Fetch a pinned pixi release onto a node: the asset for the node's platform, verified
against its published sha256, unpacked into the store without touching any shell rc file.

Safe under concurrency (a file lock per version; the binary appears by atomic rename) and
for air-gapped clusters (the node setting `settings.DOWNLOAD_URL` points at a mirror).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from ray_pixi import settings
from ray_pixi.errors import PixiNotFoundError

__all__ = ["asset_name", "install_pixi_release", "release_urls"]

_ASSETS = {
    "linux-64": "pixi-x86_64-unknown-linux-musl.tar.gz",
    "linux-aarch64": "pixi-aarch64-unknown-linux-musl.tar.gz",
    "osx-64": "pixi-x86_64-apple-darwin.tar.gz",
    "osx-arm64": "pixi-aarch64-apple-darwin.tar.gz",
    "win-64": "pixi-x86_64-pc-windows-msvc.zip",
}
_TIMEOUT_SECONDS = 60


def asset_name(platform: str) -> str:
    try:
        return _ASSETS[platform]
    except KeyError:
        raise PixiNotFoundError(
            f"pixi publishes no release for platform {platform!r}. Install pixi on the node "
            f"and set {settings.PIXI_EXE} to it."
        ) from None


def release_urls(version: str, platform: str, base_url: str | None = None) -> tuple[str, str]:
    """(asset URL, sha256 URL) of one release asset: under `base_url`, else the node's
    mirror (settings.DOWNLOAD_URL), else GitHub."""
    base = (base_url or settings.download_url(os.environ)).rstrip("/")
    asset = f"{base}/v{version}/{asset_name(platform)}"
    return asset, asset + ".sha256"


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310
            return bytes(response.read())
    except OSError as e:
        raise PixiNotFoundError(
            f"Downloading {url} failed: {e}. If this cluster has no internet access, mirror "
            f"the pixi releases and set {settings.DOWNLOAD_URL} to the mirror's base URL, or "
            f"install pixi on the nodes and set {settings.PIXI_EXE}."
        ) from e


def _extract_binary(archive: bytes, asset: str) -> bytes:
    name = "pixi.exe" if asset.endswith(".zip") else "pixi"
    if asset.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return z.read(name)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as t:
        member = t.getmember(name)
        f = t.extractfile(member)
        if f is None or not member.isfile():
            raise PixiNotFoundError(f"{asset} holds no regular file named {name!r}")
        return f.read()


def install_pixi_release(version: str, platform: str, dest_dir: Path,
                         base_url: str | None = None) -> Path:
    """Download, verify and install pixi `version` as `dest_dir/<version>/pixi`.

    Blocking; callers run it in a thread under the store's bootstrap lock. An existing
    binary is trusted only because it was renamed into place after verification.
    """
    target = dest_dir / version / ("pixi.exe" if platform == "win-64" else "pixi")
    if target.is_file():
        return target
    asset_url, sha_url = release_urls(version, platform, base_url)
    expected = _fetch(sha_url).decode(errors="replace").split()
    if not expected or len(expected[0]) != 64:
        raise PixiNotFoundError(f"{sha_url} holds no sha256 (got {expected[:1]!r}).")
    archive = _fetch(asset_url)
    actual = hashlib.sha256(archive).hexdigest()
    if actual != expected[0].lower():
        raise PixiNotFoundError(
            f"The pixi release {asset_url} has sha256 {actual}, but {sha_url} says "
            f"{expected[0]}. The download is corrupt or was tampered with; nothing was "
            "installed. Check the mirror, then retry."
        )
    binary = _extract_binary(archive, asset_url.rsplit("/", 1)[-1])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".pixi-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(binary)
        os.chmod(tmp, 0o755)  # noqa: S103 - an executable every Ray process may run
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
