"""The store trusts only complete installs, keeps entries other processes use, and
tolerates state that is already gone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ray_pixi.store import FileLock, Store, directory_size

KEY = "k" * 32


def make_ready(store: Store, key: str = KEY) -> None:
    store.workspace(key).mkdir(parents=True)
    (store.workspace(key) / "f").write_bytes(b"x" * 10_000)
    store.write_ready(key, {"size_bytes": 10_000})


def hold_lock_in_child(path: Path, shared: bool) -> subprocess.Popen[str]:
    """A separate process (as another Ray agent would be) holding an flock on `path`."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH if {shared} else fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_only_a_marked_workspace_is_ready(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.workspace(KEY).mkdir(parents=True)
    assert store.read_ready(KEY) is None
    store.write_ready(KEY, {"size_bytes": 1})
    assert store.read_ready(KEY) == {"size_bytes": 1, "key": KEY}


def test_a_marker_without_its_workspace_is_not_trusted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_ready(store)
    os.rename(store.workspace(KEY), tmp_path / "elsewhere")
    assert store.read_ready(KEY) is None


def test_sweep_removes_unmarked_workspaces_nobody_is_installing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_ready(store, "a" * 32)
    store.workspace("b" * 32).mkdir()  # crashed install: no marker, lock free
    store.workspace("c" * 32).mkdir()  # install under way in another process
    (store.trash / "old").mkdir()
    child = hold_lock_in_child(store.install_lock("c" * 32).path, shared=False)
    try:
        assert store.sweep() == ["b" * 32]
    finally:
        child.communicate("")
    assert store.workspace("a" * 32).is_dir()
    assert not store.workspace("b" * 32).exists()
    assert store.workspace("c" * 32).is_dir()
    assert list(store.trash.iterdir()) == []


def test_an_entry_another_agent_uses_is_not_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_ready(store)
    child = hold_lock_in_child(store.use_lock(KEY).path, shared=True)
    try:
        assert store.delete_if_unused(KEY, background=False) is False
        assert store.read_ready(KEY) is not None
    finally:
        child.communicate("")
    assert store.delete_if_unused(KEY, background=False) is True
    assert store.read_ready(KEY) is None
    assert not store.workspace(KEY).exists()


def test_deleting_what_is_already_gone_does_not_raise(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.delete_if_unused(KEY, background=False) is True
    make_ready(store)
    store.discard(KEY)
    store.discard(KEY)
    assert store.read_ready(KEY) is None


def test_the_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "x.lock")
    child = hold_lock_in_child(lock.path, shared=False)
    assert lock.try_acquire() is None
    child.kill()
    child.wait()
    fd = lock.try_acquire()
    assert fd is not None
    FileLock.release(fd)


def test_hard_links_are_counted_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    single = directory_size(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    assert directory_size(tmp_path) == single >= 100_000


def test_files_linked_from_the_package_cache_are_not_counted(tmp_path: Path) -> None:
    """Deleting an environment frees only what no package cache links to."""
    cache, env = tmp_path / "cache", tmp_path / "env"
    cache.mkdir()
    env.mkdir()
    (cache / "pkg.so").write_bytes(b"x" * 1_000_000)
    (env / "own.txt").write_bytes(b"y" * 100_000)
    os.link(cache / "pkg.so", env / "pkg.so")
    assert 100_000 <= directory_size(env) < 1_000_000
    (cache / "pkg.so").unlink()  # the cache was cleaned: now the env alone holds it
    assert directory_size(env) >= 1_100_000


@pytest.mark.parametrize("shared", [True, False])
def test_async_lock_waits_without_blocking_the_loop(tmp_path: Path, shared: bool) -> None:
    import asyncio

    lock = FileLock(tmp_path / "y.lock")

    async def scenario() -> None:
        fd = await lock.acquire_async(shared=shared)
        waiter = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0)  # let the waiter start; the loop must stay responsive
        assert not waiter.done()
        FileLock.release(fd)
        FileLock.release(await asyncio.wait_for(waiter, 10))

    asyncio.run(scenario())
