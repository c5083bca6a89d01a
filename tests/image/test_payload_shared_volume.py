"""One volume directory (a hostPath or a ReadWriteMany PVC) shared by Ray pods of two uids, two
architectures and two payload versions: `ray-pixi-payload add` run as real, different uids
(this test runs as root and drops to them), the real pixi for x86_64, and for aarch64 a file
with an aarch64 ELF header (this machine cannot run an arm64 pixi; the installer only reads
the header, and an x86_64 node never runs it).

The installer runs as the image runs it: its own file with the system Python (no venv, no
third-party package), as uid 65534 for one cluster and as the Ray uid 1000 for another.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from realpixi.find import SHARED_PIXI, check_sha256
from support import REPO

pytestmark = pytest.mark.integration

INSTALLER = REPO / "operator" / "src" / "ray_pixi_operator" / "payload.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
KEY_A, KEY_B = "0.2.0-aaaaaaaaaaaa", "0.3.0-bbbbbbbbbbbb"
SHARED_GID = 4242  # a pod's fsGroup, or the gid an admin prepared the directory for


def aarch64_stand_in() -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[16:18], header[18:20] = (2).to_bytes(2, "little"), (0xB7).to_bytes(2, "little")
    return bytes(header)


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0:
        pytest.skip("switching to other uids needs root")
    if not SYSTEM_PYTHON.is_file() or not SHARED_PIXI.is_file():
        pytest.skip(f"needs {SYSTEM_PYTHON} and the real pixi at {SHARED_PIXI}")
    check_sha256(SHARED_PIXI, SHARED_PIXI.with_name("pixi.sha256"))
    root = Path(tempfile.mkdtemp(prefix="pods-shared-volume-"))
    root.chmod(0o755)
    # The checkout may sit where other uids cannot enter (a mktemp -d clone is 0700): they
    # run a copy of the installer from here.
    shutil.copy2(INSTALLER, root / INSTALLER.name)
    (root / INSTALLER.name).chmod(0o644)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_source(world: Path, name: str, pixi: bytes | Path, version: str) -> Path:
    source = world / name
    (source / "bin").mkdir(parents=True)
    if isinstance(pixi, Path):
        shutil.copy2(pixi, source / "bin" / "pixi")
    else:
        (source / "bin" / "pixi").write_bytes(pixi)
    (source / "bin" / "pixi").chmod(0o755)
    shutil.copytree(REPO / "src" / "ray_pixi", source / "python" / "ray_pixi",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (source / "python" / "ray_pixi" / "_payload_version.py").write_text(f"V = {version!r}\n")
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return source


def as_uid(uid: int, *argv: str | Path, groups: tuple[int, ...] = (), env: dict | None = None,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [str(a) for a in argv], user=uid, group=groups[0] if groups else uid,
        extra_groups=list(groups), capture_output=True, text=True, timeout=300, cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(env or {})},
    )  # fmt: skip


def add(uid: int, volume: Path, key: str, source: Path, groups: tuple[int, ...] = ()) -> str:
    done = as_uid(uid, SYSTEM_PYTHON, volume.parent / INSTALLER.name, "add",
                  volume / "payloads" / key,
                  "--source", source, groups=groups)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    "sharing",
    ["world-writable", "group-writable"],
    ids=["prepared-1777", "fsgroup-2770"],
)
def test_two_uids_two_architectures_and_two_versions_share_one_volume(world, sharing):
    volume = world / "volume"
    volume.mkdir()
    groups: tuple[int, ...] = ()
    if sharing == "world-writable":
        volume.chmod(0o1777)  # `ray-pixi-payload prepare-volume`, or the documented mkdir
    else:
        os.chown(volume, 0, SHARED_GID)
        volume.chmod(0o2770)  # what an fsGroup gives a volume
        groups = (SHARED_GID,)
    x86 = make_source(world, "x86", SHARED_PIXI, "a")
    arm = make_source(world, "arm", aarch64_stand_in(), "a")
    newer = make_source(world, "newer", SHARED_PIXI, "b")

    # Cluster A (amd64 nodes, the image's non-root uid), cluster B (arm64 nodes, running its
    # installer as its Ray uid 1000), then cluster C with a newer payload, as uid 1000.
    out_a = add(65534, volume, KEY_A, x86, groups)
    out_b = add(1000, volume, KEY_A, arm, groups)
    out_c = add(1000, volume, KEY_B, newer, groups)
    assert "warning" not in out_a + out_c, out_a + out_c
    # The one warning: this x86_64 machine is no arm64 node (on one, there is none).
    (warning,) = [line for line in out_b.splitlines() if "warning" in line]
    assert "built for aarch64 but this node is x86_64" in warning
    assert "added python, lib, bin, x86_64" in out_a
    assert "for aarch64: added aarch64; already present: python, lib, bin" in out_b
    payload_a = volume / "payloads" / KEY_A
    assert {p.name for p in payload_a.iterdir()} >= {"python", "lib", "bin", "x86_64", "aarch64"}
    assert (payload_a / "x86_64" / "pixi").stat().st_uid == 65534
    assert (payload_a / "aarch64" / "pixi").stat().st_uid == 1000
    assert hashlib.sha256((payload_a / "x86_64" / "pixi").read_bytes()).digest() == (
        hashlib.sha256(SHARED_PIXI.read_bytes()).digest()
    )

    # The Ray user (1000) of an amd64 pod runs the real pixi through the launcher and imports
    # its own payload version through the user site; so does a pod on the newer one.
    for key, version in ((KEY_A, "a"), (KEY_B, "b")):
        payload = volume / "payloads" / key
        pixi = as_uid(1000, payload / "bin" / "pixi", "--version", groups=groups)
        assert pixi.stdout.strip() == "pixi 0.77.0", pixi.stderr
        imported = as_uid(
            1000, SYSTEM_PYTHON, "-c",
            "import ray_pixi, ray_pixi._payload_version as v; print(v.V, ray_pixi.__file__)",
            groups=groups, env={"PYTHONUSERBASE": str(payload)},
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.split() == [version, str(payload / "python/ray_pixi/__init__.py")]

    # Either uid writes the store and pixi's cache, and takes the other's lock file.
    for uid in (65534, 1000):
        for shared in ("store", "pixi-cache"):
            made = as_uid(uid, "mkdir", volume / shared / f"by-{uid}", groups=groups)
            assert made.returncode == 0, made.stderr
    for key, uid in ((KEY_A, 1000), (KEY_B, 65534)):  # each lock made by the other uid
        locked = as_uid(uid, "flock", "--nonblock", volume / "payloads" / key / ".lock", "true",
                        groups=groups)  # fmt: skip
        assert locked.returncode == 0, locked.stderr
    # Nobody changes another uid's part of a payload.
    replaced = as_uid(1000, "rm", "-rf", payload_a / "x86_64", groups=groups)
    assert replaced.returncode != 0 and (payload_a / "x86_64" / "pixi").is_file()
    if sharing == "group-writable":
        mode = stat.S_IMODE((volume / "store").stat().st_mode)
        assert mode == 0o2775 and (volume / "store").stat().st_gid == SHARED_GID
        assert (volume / "store" / "by-1000").stat().st_gid == SHARED_GID  # stays in the group
