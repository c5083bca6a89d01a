"""`ray-pixi-payload add`: the payload laid out by payload image and architecture on a volume
that pods of several versions, architectures and uids share, without Docker.

The stand-ins for pixi here are files with an ELF header of the architecture they claim (an
arm64 pixi cannot run on this x86_64 machine, and the installer only reads the header) or a
shell script; tests/image/test_payload_shared_volume.py runs the real pixi as two real uids.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ray_pixi_operator import payload
from ray_pixi_operator.payload import add, binary_arch, main, prepare_volume, shared_modes

# A Python whose user site is honoured (not a venv), as in Ray's images (/home/ray/anaconda3).
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def elf_header(arch: str) -> bytes:
    """The first 64 bytes of a little-endian ELF64 executable for `arch` (not runnable)."""
    machine = {"x86_64": 0x3E, "aarch64": 0xB7}[arch]
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[16:18] = (2).to_bytes(2, "little")  # ET_EXEC
    header[18:20] = machine.to_bytes(2, "little")
    return bytes(header)


def make_source(root: Path, version: str, pixi: bytes | None = None) -> Path:
    """A payload as the image has it; `pixi` the binary's bytes (default: a script)."""
    source = root / f"source-{version}-{hashlib.sha256(pixi or b'').hexdigest()[:8]}"
    if source.exists():
        return source
    (source / "bin").mkdir(parents=True)
    exe = source / "bin" / "pixi"
    exe.write_bytes(pixi if pixi is not None else f"#!/bin/sh\necho pixi {version}\n".encode())
    exe.chmod(0o700)
    package = source / "python" / "ray_pixi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    return source


def key_dir(volume: Path, key: str = "0.2.0-0123456789ab") -> Path:
    return volume / "payloads" / key


def test_add_lays_out_the_pod_contract(tmp_path, volume):
    dest = key_dir(volume)
    result = add(dest, make_source(tmp_path, "1"))
    assert result.added == ("python", "lib", "bin", result.arch)
    launcher = dest / "bin" / "pixi"
    assert subprocess.run([launcher], capture_output=True, text=True).stdout == "pixi 1\n"
    assert stat.S_IMODE((dest / result.arch / "pixi").stat().st_mode) == 0o755
    for part in ("python", "lib", "bin", result.arch):
        for dirpath, _, filenames in os.walk(dest / part):
            assert stat.S_IMODE(Path(dirpath).stat().st_mode) == 0o755
            for name in filenames:
                assert stat.S_IMODE((Path(dirpath) / name).stat().st_mode) in (0o644, 0o755)
    for shared in ("store", "pixi-cache", "payloads", f"payloads/{dest.name}"):
        assert stat.S_IMODE((volume / shared).stat().st_mode) == 0o1777
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]


def test_the_user_site_adds_the_payload_after_pythonpath_and_keeps_the_home_user_site(
    tmp_path, volume
):
    dest = key_dir(volume)
    add(dest, make_source(tmp_path, "1"))
    home = tmp_path / "home"
    home_site = home / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (home_site / "site-packages").mkdir(parents=True)
    (home_site / "site-packages" / "from_home.py").write_text("WHERE = 'home'\n")
    image = tmp_path / "image-code"
    image.mkdir()
    (image / "from_image.py").write_text("WHERE = 'image'\n")
    out = subprocess.run(
        [BASE_PYTHON, "-c", "import sys, ray_pixi, from_image, from_home; "
         "print(ray_pixi.__version__); print('\\n'.join(sys.path))"],
        env={"HOME": str(home), "PYTHONUSERBASE": str(dest), "PYTHONPATH": str(image),
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    version, *path = out.stdout.splitlines()
    assert version == "1"
    image_at, payload_at = path.index(str(image)), path.index(str(dest / "python"))
    home_at = path.index(str(home_site / "site-packages"))
    assert image_at < payload_at < home_at  # the image's PYTHONPATH first, as without ray-pixi


def test_add_again_changes_nothing(tmp_path, volume):
    dest, source = key_dir(volume), make_source(tmp_path, "1")
    add(dest, source)
    before = {p: p.lstat().st_mtime_ns for p in dest.rglob("*") if p.name != ".lock"}
    second = add(dest, source)
    assert second.added == () and second.warnings == ()
    assert {p: p.lstat().st_mtime_ns for p in dest.rglob("*") if p.name != ".lock"} == before


def test_two_architectures_share_one_payload_directory(tmp_path, volume, monkeypatch):
    dest = key_dir(volume)
    x86 = add(dest, make_source(tmp_path, "1", elf_header("x86_64")))
    monkeypatch.setattr(payload.platform, "machine", lambda: "aarch64")
    arm = add(dest, make_source(tmp_path, "1", elf_header("aarch64")))
    assert (x86.arch, arm.arch) == ("x86_64", "aarch64")
    assert arm.added == ("aarch64",) and arm.present == ("python", "lib", "bin")
    assert binary_arch(dest / "x86_64" / "pixi") == "x86_64"
    assert binary_arch(dest / "aarch64" / "pixi") == "aarch64"
    assert arm.warnings == ()


def test_another_payload_version_gets_its_own_directory(tmp_path, volume):
    one = add(key_dir(volume, "0.2.0-aaaaaaaaaaaa"), make_source(tmp_path, "1"))
    two = add(key_dir(volume, "0.3.0-bbbbbbbbbbbb"), make_source(tmp_path, "2"))
    for result, version in ((one, "1"), (two, "2")):
        out = subprocess.run([result.dest / "bin" / "pixi"], capture_output=True, text=True)
        assert out.stdout == f"pixi {version}\n"


def test_a_reused_tag_with_other_content_keeps_what_is_there_and_says_so(tmp_path, volume):
    dest = key_dir(volume)
    add(dest, make_source(tmp_path, "1"))
    result = add(dest, make_source(tmp_path, "2"))
    assert result.added == ()
    assert any("holds another build" in w and "python" in w for w in result.warnings)
    assert (dest / "python" / "ray_pixi" / "__init__.py").read_text() == "__version__ = '1'\n"


def test_a_pixi_built_for_another_architecture_goes_to_its_own_directory(
    tmp_path, volume, capsys
):
    dest = key_dir(volume)
    source = make_source(tmp_path, "1", elf_header("aarch64"))
    assert main(["add", str(dest), "--source", str(source)]) == 0  # never block the pod
    err = capsys.readouterr().err
    assert "built for aarch64 but this node is x86_64" in err
    assert (dest / "aarch64" / "pixi").is_file() and not (dest / "x86_64").exists()
    # The launcher then says what is wrong instead of running the wrong binary.
    out = subprocess.run([dest / "bin" / "pixi", "--version"], capture_output=True, text=True)
    assert out.returncode == 127
    assert "no pixi for x86_64" in out.stderr and "init container" in out.stderr


def test_concurrent_installers_of_one_payload(tmp_path, volume):
    """Pods sharing a hostPath or PVC start together: each part is written once."""
    dest, source = key_dir(volume), make_source(tmp_path, "1")
    code = (
        "import sys; from ray_pixi_operator.payload import main; "
        f"sys.exit(main(['add', {str(dest)!r}, '--source', {str(source)!r}]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert sum("added python" in out for out, _ in outputs) == 1, outputs


def test_readers_never_see_part_of_a_payload(tmp_path, volume):
    dest = key_dir(volume)
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            init = dest / "python" / "ray_pixi" / "__init__.py"
            if (dest / "python").exists() and not init.is_file():
                errors.append("python/ without ray_pixi")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(20):
            add(key_dir(volume, f"v{version}-0123456789ab"), make_source(tmp_path, str(version)))
            dest = key_dir(volume, f"v{version + 1}-0123456789ab")
    finally:
        stop.set()
        reader.join()
    assert errors == []


def test_a_crash_mid_copy_leaves_nothing_half_made(tmp_path, volume, monkeypatch):
    dest = key_dir(volume)
    real_copy = payload.shutil.copyfileobj

    def die(fin, fout, length=0):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(payload.shutil, "copyfileobj", die)
    with pytest.raises(OSError):
        add(dest, make_source(tmp_path, "1"))
    assert not (dest / "python").exists()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".tmp-")] == []
    monkeypatch.setattr(payload.shutil, "copyfileobj", real_copy)
    assert "python" in add(dest, make_source(tmp_path, "1")).added


@pytest.mark.parametrize(
    ("root_mode", "payloads_mode", "store_mode"),
    [(0o777, 0o1777, 0o1777), (0o1777, 0o1777, 0o1777), (0o2775, 0o3775, 0o2775),
     (0o770, 0o3775, 0o2775), (0o755, 0o755, 0o1777)],
)  # fmt: skip
def test_shared_directories_are_as_shared_as_the_volume_root(
    root_mode, payloads_mode, store_mode, tmp_path, volume
):
    volume.chmod(root_mode)
    assert shared_modes(volume) == (payloads_mode, store_mode)
    add(key_dir(volume), make_source(tmp_path, "1"))
    assert stat.S_IMODE((volume / "payloads").stat().st_mode) == payloads_mode
    assert stat.S_IMODE((volume / "store").stat().st_mode) == store_mode
    assert stat.S_IMODE((volume / "pixi-cache").stat().st_mode) == store_mode


def test_the_lock_file_can_be_taken_by_any_uid(tmp_path, volume):
    dest = key_dir(volume)
    add(dest, make_source(tmp_path, "1"))
    assert stat.S_IMODE((dest / ".lock").stat().st_mode) & 0o444 == 0o444


def test_prepare_volume_opens_a_root_owned_directory_to_every_uid(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o755)  # as kubelet creates a hostPath directory (owned by this uid)
    assert "0755 -> 1777" in prepare_volume(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o1777
    assert "already writable" in prepare_volume(fresh)
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o755)
        os.chown(other, 1234, 1234)
        with pytest.raises(payload.PayloadError, match="belongs to uid 1234"):
            prepare_volume(other)


def test_unwritable_volume_fails_with_what_to_do(tmp_path, volume, monkeypatch, capsys):
    real_access = os.access
    monkeypatch.setattr(
        payload.os,
        "access",
        lambda path, mode: False if Path(path) == volume else real_access(path, mode),
    )
    assert main(["add", str(key_dir(volume)), "--source", str(make_source(tmp_path, "1"))]) == 1
    err = capsys.readouterr().err
    assert f"cannot write to {volume}" in err and "hostPath" in err and "1777" in err
