"""Which real pixi the tests run: never one from PATH or installed by hand.

Order: `$RAY_PIXI_TEST_PIXI`; the repository's sibling `../shared/pixi/pixi`, checked
against its `pixi.sha256`; else pixi's own v0.77.0 release for this platform, downloaded
with `ray_pixi.bootstrap` (verified against the release's published sha256) into the
user cache.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import REPO, persistent_cache

__all__ = ["PIXI_VERSION", "PIXI_VAR", "PixiNotAvailable", "TestPixi", "check_sha256", "find_pixi",
           "release_pixi"]

PIXI_VERSION = "0.77.0"
PIXI_VAR = "RAY_PIXI_TEST_PIXI"
SHARED_PIXI = REPO.parent / "shared" / "pixi" / "pixi"


class PixiNotAvailable(RuntimeError):
    """No pixi could be found or fetched (a prerequisite, not a test failure)."""


@dataclass(frozen=True)
class TestPixi:
    """The pixi a test session runs: its path, `pixi --version`'s version, and its source
    (`$RAY_PIXI_TEST_PIXI`, `shared`, or `release`)."""

    __test__ = False  # not a pytest test class

    path: Path
    version: str
    source: str

    def describe(self) -> str:
        return f"pixi {self.version} at {self.path} (from {self.source})"


def pixi_version(path: Path) -> str:
    """`X.Y.Z` from `pixi --version` (which prints `pixi X.Y.Z`)."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise PixiNotAvailable(f"{path} does not run as pixi: {e}") from e
    match = re.fullmatch(r"pixi (\S+)\s*", out)
    if match is None:
        raise PixiNotAvailable(f"`{path} --version` printed {out!r}, not `pixi X.Y.Z`")
    return match.group(1)


def check_sha256(binary: Path, sums: Path) -> None:
    """Fail loudly unless `binary` hashes to what `sums` (sha256sum format) says."""
    fields = sums.read_text().split()
    expected = fields[0].lower() if fields else ""
    actual = hashlib.sha256(binary.read_bytes()).hexdigest()
    if actual != expected:
        raise RuntimeError(
            f"{binary} has sha256 {actual}, but {sums} says {expected or '(nothing)'}: the "
            "shared pixi is corrupt or was replaced. Restore it, or set "
            f"{PIXI_VAR} to a pixi you trust."
        )


def release_pixi(download: bool = True, cache: Path | None = None) -> Path:
    """pixi's v0.77.0 release for this platform, fetched once into `cache` (default: the
    user cache) by `ray_pixi.bootstrap`, which checks the asset against its published
    `.sha256` (`RAY_PIXI_DOWNLOAD_URL` names a mirror of the releases)."""
    from ray_pixi.bootstrap import install_pixi_release
    from ray_pixi.cluster import node_platform
    from ray_pixi.errors import PixiNotFoundError

    dest = cache or persistent_cache("pixi-release")
    dest.mkdir(parents=True, exist_ok=True)
    cached = dest / PIXI_VERSION / "pixi"
    if not download and not cached.is_file():
        raise PixiNotAvailable(f"pixi {PIXI_VERSION} is not downloaded yet; the first test "
                               f"that needs it fetches the release into {cached.parent}")
    # install_pixi_release expects its caller to serialise; other sessions share this dir.
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return Path(install_pixi_release(PIXI_VERSION, node_platform(), dest))
        except PixiNotFoundError as e:
            if isinstance(e.__cause__, OSError):  # unreachable: a prerequisite missing
                raise PixiNotAvailable(f"pixi {PIXI_VERSION} release: {e}") from e
            raise RuntimeError(str(e)) from e  # a corrupt or tampered download: loud


@functools.cache
def _shared_pixi() -> TestPixi:
    """Checked once per process (hashing the 100+ MB binary takes a moment)."""
    check_sha256(SHARED_PIXI, SHARED_PIXI.with_name("pixi.sha256"))
    return TestPixi(SHARED_PIXI, pixi_version(SHARED_PIXI), "shared")


def find_pixi(download: bool = True) -> TestPixi:
    """The pixi for this session (see the module docstring for the order).

    `download=False` only looks (for pytest's header): it never fetches the release.
    """
    given = os.environ.get(PIXI_VAR)
    if given:
        # Asked for explicitly: a wrong value is an error to fix, never a reason to skip.
        path = Path(given)
        if not path.is_file():
            raise RuntimeError(f"{PIXI_VAR}={given!r} names no file; point it at a pixi "
                               "binary or unset it")
        try:
            return TestPixi(path, pixi_version(path), f"${PIXI_VAR}")
        except PixiNotAvailable as e:
            raise RuntimeError(f"{PIXI_VAR}={given!r}: {e}") from e
    if SHARED_PIXI.is_file():
        return _shared_pixi()
    path = release_pixi(download)
    return TestPixi(path, pixi_version(path), "release")
