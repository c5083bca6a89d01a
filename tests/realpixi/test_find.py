"""Which pixi the tests run, and that only a verified one runs."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from realpixi.find import PIXI_VERSION, SHARED_PIXI, check_sha256, release_pixi


def test_shared_pixi_is_refused_when_its_checksum_does_not_match(tmp_path: Path) -> None:
    binary, sums = tmp_path / "pixi", tmp_path / "pixi.sha256"
    binary.write_bytes(b"some binary")
    sums.write_text(f"{hashlib.sha256(b'some binary').hexdigest()}  pixi\n")
    check_sha256(binary, sums)
    binary.write_bytes(b"a replaced binary")
    with pytest.raises(RuntimeError, match="has sha256 .* but .*pixi.sha256 says"):
        check_sha256(binary, sums)


@pytest.fixture
def release_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback mirror of pixi's GitHub releases (what RAY_PIXI_DOWNLOAD_URL names)."""
    root = tmp_path / "releases"
    handler = type("H", (http.server.SimpleHTTPRequestHandler,), {
        "log_message": lambda self, *a: None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def publish(root: Path, binary: bytes, published_sha: str | None = None) -> None:
    asset = root / f"v{PIXI_VERSION}" / "pixi-x86_64-unknown-linux-musl.tar.gz"
    asset.parent.mkdir(parents=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("pixi")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
    asset.write_bytes(raw.getvalue())
    sha = published_sha or hashlib.sha256(raw.getvalue()).hexdigest()
    asset.with_name(asset.name + ".sha256").write_text(f"{sha}  {asset.name}\n")


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_PIXI.is_file(), reason="needs the shared pixi to publish")
def test_release_pixi_is_downloaded_verified_and_runs(
        release_mirror: tuple[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The third source: the release asset for this platform, checked against its
    published .sha256 (here from a loopback mirror of the releases)."""
    import platform
    import subprocess

    if platform.machine() != "x86_64":
        pytest.skip("the shared pixi is the x86_64 build")
    url, root = release_mirror
    publish(root, SHARED_PIXI.read_bytes())
    monkeypatch.setenv("RAY_PIXI_DOWNLOAD_URL", url)
    path = release_pixi(cache=tmp_path / "cache")
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"pixi {PIXI_VERSION}"


def test_release_pixi_with_a_wrong_checksum_fails_loudly(
        release_mirror: tuple[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = release_mirror
    publish(root, b"#!/bin/sh\necho tampered\n", published_sha="0" * 64)
    monkeypatch.setenv("RAY_PIXI_DOWNLOAD_URL", url)
    with pytest.raises(RuntimeError, match="tampered"):
        release_pixi(cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / PIXI_VERSION / "pixi").exists()
