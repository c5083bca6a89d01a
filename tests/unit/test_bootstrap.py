"""A pinned pixi is fetched from a release server (or a mirror), verified against its
published sha256, and installed atomically; a bad checksum installs nothing."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ray_pixi.bootstrap import asset_name, install_pixi_release
from ray_pixi.errors import PixiNotFoundError

VERSION = "0.77.0"
# What the asset holds matters only as bytes to unpack and compare: a small executable.
PAYLOAD = Path("/bin/true")


def release_tree(root: Path, platform: str = "linux-64", *, corrupt: bool = False) -> None:
    """Lay out <root>/v<version>/<asset> and <asset>.sha256 as pixi's releases page does."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(PAYLOAD, arcname="pixi")
    archive = buffer.getvalue()
    asset = root / f"v{VERSION}" / asset_name(platform)
    asset.parent.mkdir(parents=True)
    asset.write_bytes(archive)
    digest = hashlib.sha256(archive + (b"tampered" if corrupt else b"")).hexdigest()
    asset.with_name(asset.name + ".sha256").write_text(f"{digest}  {asset.name}\n")


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A release mirror served over HTTP on loopback; yields its root and the request log."""
    root = tmp_path / "mirror"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RAY_PIXI_DOWNLOAD_URL", f"http://127.0.0.1:{server.server_port}/")
    yield root, requests
    server.shutdown()


def test_a_verified_release_is_installed_from_the_mirror(mirror, tmp_path: Path) -> None:
    root, requests = mirror
    release_tree(root)
    path = install_pixi_release(VERSION, "linux-64", tmp_path / "bin")
    assert path == tmp_path / "bin" / VERSION / "pixi"
    assert path.read_bytes() == PAYLOAD.read_bytes()
    assert path.stat().st_mode & 0o111
    assert f"/v{VERSION}/pixi-x86_64-unknown-linux-musl.tar.gz" in " ".join(requests)


def test_a_checksum_mismatch_installs_nothing(mirror, tmp_path: Path) -> None:
    root, _ = mirror
    release_tree(root, corrupt=True)
    with pytest.raises(PixiNotFoundError, match="has sha256 .* but .* says .*nothing was "):
        install_pixi_release(VERSION, "linux-64", tmp_path / "bin")
    assert list((tmp_path / "bin").rglob("*pixi*")) == []


def test_an_unreachable_mirror_says_how_to_configure_one(mirror, tmp_path: Path) -> None:
    with pytest.raises(PixiNotFoundError, match="set RAY_PIXI_DOWNLOAD_URL to the mirror"):
        install_pixi_release(VERSION, "linux-64", tmp_path / "bin")


def test_concurrent_bootstraps_end_with_one_good_binary(mirror, tmp_path: Path) -> None:
    root, _ = mirror
    release_tree(root)
    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: install_pixi_release(VERSION, "linux-64", tmp_path / "b"),
                             range(8)))
    assert paths == {tmp_path / "b" / VERSION / "pixi"}
    assert [p.name for p in (tmp_path / "b" / VERSION).iterdir()] == ["pixi"]


def test_a_platform_without_a_release_is_refused() -> None:
    with pytest.raises(PixiNotFoundError, match="no release for platform 'linux-s390x'"):
        asset_name("linux-s390x")
