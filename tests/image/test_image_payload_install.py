"""`ray-pixi-payload install`: what the init container leaves on the shared volume, without Docker.

Idempotent (a second run changes nothing) and atomic (a reader, a crash or a concurrent
installer never sees part of a payload).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_pixi_operator import payload
from ray_pixi_operator.payload import main
from ray_pixi_operator.payload_legacy import install


def make_source(root: Path, version: str) -> Path:
    """A payload laid out as the image has it, whose content depends on `version`."""
    source = root / f"source-{version}"
    if source.exists():
        return source
    (source / "bin").mkdir(parents=True)
    pixi = source / "bin" / "pixi"
    pixi.write_text(f"#!/bin/sh\necho pixi {version}\n")
    pixi.chmod(0o700)  # modes are normalised on copy
    package = source / "python" / "ray_pixi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (source / "python" / "tomli_w").mkdir()
    (source / "python" / "tomli_w" / "__init__.py").write_text("def dumps(x):\n    return ''\n")
    return source


def test_install_lays_out_the_pod_contract(tmp_path, volume):
    result = install(volume / "payload", make_source(tmp_path, "1"))
    dest = volume / "payload"
    assert dest.is_symlink() and not os.path.isabs(os.readlink(dest))
    pixi = dest / "bin" / "pixi"
    assert os.access(pixi, os.X_OK)
    assert stat.S_IMODE(pixi.stat().st_mode) == 0o755
    assert subprocess.run([pixi], capture_output=True, text=True).stdout == "pixi 1\n"
    init = dest / "python" / "ray_pixi" / "__init__.py"
    assert stat.S_IMODE(init.stat().st_mode) == 0o644
    for shared in ("store", "pixi-cache"):
        assert stat.S_IMODE((volume / shared).stat().st_mode) == 0o1777
    assert result.copied and result.switched
    # Another uid (the Ray container's) may run and import it: every dir 0755.
    for dirpath, _, _ in os.walk(result.version_dir):
        assert stat.S_IMODE(Path(dirpath).stat().st_mode) == 0o755


def test_payload_imports_from_the_pythonpath_entry(tmp_path, volume):
    install(volume / "payload", make_source(tmp_path, "1"))
    out = subprocess.run(
        [sys.executable, "-c", "import ray_pixi, tomli_w; print(ray_pixi.__version__)"],
        env={"PYTHONPATH": str(volume / "payload" / "python"), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"


def test_second_install_changes_nothing(tmp_path, volume):
    source = make_source(tmp_path, "1")
    first = install(volume / "payload", source)
    before = {p: p.lstat().st_mtime_ns for p in volume.rglob("*")}
    second = install(volume / "payload", source)
    assert (second.copied, second.switched, second.pruned) == (False, False, ())
    assert second.version_dir == first.version_dir
    after = {p: p.lstat().st_mtime_ns for p in volume.rglob("*")}
    assert after == before


def test_new_payload_switches_the_link_and_keeps_one_previous(tmp_path, volume):
    dest = volume / "payload"
    v1 = install(dest, make_source(tmp_path, "1")).version_dir
    v2 = install(dest, make_source(tmp_path, "2")).version_dir
    assert os.readlink(dest) == v2.name and v1.is_dir()  # the previous stays for running pods
    result = install(dest, make_source(tmp_path, "3"))
    assert result.pruned == (v1,) and not v1.exists() and v2.is_dir()
    assert (dest / "python" / "ray_pixi" / "__init__.py").read_text() == "__version__ = '3'\n"


def test_a_crash_mid_copy_leaves_the_old_payload_in_place(tmp_path, volume, monkeypatch):
    dest = volume / "payload"
    old = install(dest, make_source(tmp_path, "1"))
    calls = {"n": 0}
    real_copy = payload.shutil.copyfileobj

    def copy_then_die(fin, fout, length=0):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_copy(fin, fout, length)

    monkeypatch.setattr(payload.shutil, "copyfileobj", copy_then_die)
    with pytest.raises(OSError):
        install(dest, make_source(tmp_path, "2"))
    assert os.readlink(dest) == old.version_dir.name
    assert (dest / "python" / "ray_pixi" / "__init__.py").read_text() == "__version__ = '1'\n"
    assert [p.name for p in volume.iterdir() if ".tmp-" in p.name] == []  # nothing half-made
    monkeypatch.undo()
    assert install(dest, make_source(tmp_path, "2")).copied  # and the next try succeeds


def test_readers_see_the_old_or_the_new_payload_never_a_gap(tmp_path, volume):
    dest = volume / "payload"
    sources = [make_source(tmp_path, "1"), make_source(tmp_path, "2")]
    install(dest, sources[0])
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((dest / "python" / "ray_pixi" / "__init__.py").read_text())
                assert os.access(dest / "bin" / "pixi", os.X_OK)
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            install(dest, sources[i % 2])
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert seen == {"__version__ = '1'\n", "__version__ = '2'\n"}


def test_concurrent_installers_on_one_volume(tmp_path, volume):
    """Pods sharing a hostPath/PVC start together: one copy, every installer succeeds."""
    source = make_source(tmp_path, "1")
    code = (
        "import sys; from ray_pixi_operator.payload import main; "
        f"sys.exit(main(['install', {str(volume / 'payload')!r}, '--source', {str(source)!r}]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    copied = sum("copied;" in out for out, _ in outputs)
    assert copied == 1, outputs
    versions = [p for p in volume.iterdir() if p.name.startswith(".payload-") and p.is_dir()]
    assert len(versions) == 1


def test_stale_temporary_copies_are_cleaned_fresh_ones_kept(tmp_path, volume):
    source = make_source(tmp_path, "1")
    stale = volume / ".payload-0123456789abcdef.tmp-1-dead"
    fresh = volume / ".payload-fedcba9876543210.tmp-2-live"
    for path in (stale, fresh):
        (path / "bin").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    result = install(volume / "payload", source)
    assert stale in result.pruned and not stale.exists()
    assert fresh.exists()


def test_a_directory_left_at_dest_is_replaced(tmp_path, volume):
    (volume / "payload" / "bin").mkdir(parents=True)
    (volume / "payload" / "bin" / "pixi").write_text("old")
    install(volume / "payload", make_source(tmp_path, "1"))
    assert (volume / "payload").is_symlink()
    assert [p.name for p in volume.iterdir() if "replaced" in p.name] == []


def test_shared_dirs_made_by_another_uid_are_left_with_a_warning(
    tmp_path, volume, monkeypatch, capsys
):
    (volume / "store").mkdir(mode=0o755)

    def refuse(path, mode):  # type: ignore[no-untyped-def]
        raise PermissionError(1, "Operation not permitted", str(path))

    source = make_source(tmp_path, "1")
    monkeypatch.setattr(
        payload.os, "chmod", lambda p, m: None if ".payload" in str(p) else refuse(p, m)
    )
    install(volume / "payload", source)
    assert "cannot make it writable for the Ray container's user" in capsys.readouterr().err


def test_unwritable_volume_fails_with_what_to_do(tmp_path, volume, monkeypatch, capsys):
    source = make_source(tmp_path, "1")
    real_access = os.access
    monkeypatch.setattr(
        payload.os,
        "access",
        lambda path, mode: False if Path(path) == volume else real_access(path, mode),
    )
    code = main(["install", str(volume / "payload"), "--source", str(source)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot write to {volume}" in err and "hostPath" in err and "1777" in err


def test_source_without_pixi_is_refused(tmp_path, volume, capsys):
    source = make_source(tmp_path, "1")
    (source / "bin" / "pixi").unlink()
    assert main(["install", str(volume / "payload"), "--source", str(source)]) == 1
    assert "has no executable bin/pixi" in capsys.readouterr().err


def test_cli_reports_what_it_did(tmp_path, volume, capsys):
    source = make_source(tmp_path, "1")
    assert main(["install", str(volume / "payload"), "--source", str(source)]) == 0
    assert main(["install", str(volume / "payload"), "--source", str(source)]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert " copied; " in first and " already present; " in second
