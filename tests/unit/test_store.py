"""The store trusts only complete installs, keeps entries other processes use, and
tolerates state that is already gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_pixi.records import ReadyRecord
from ray_pixi.store import EntryState, FileLock, Store, directory_size
from support import hold_flock

KEY = "k" * 32
SRC = Path(__file__).resolve().parents[2] / "src"


def make_ready(store: Store, key: str = KEY) -> None:
    store.workspace(key).mkdir(parents=True)
    (store.workspace(key) / "f").write_bytes(b"x" * 10_000)
    store.write_ready(ReadyRecord(key, size_bytes=10_000))


def test_only_a_marked_workspace_is_ready(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    store.workspace(KEY).mkdir(parents=True)
    assert store.read_ready(KEY) is None
    store.write_ready(ReadyRecord(KEY, size_bytes=1))
    assert store.read_ready(KEY) == ReadyRecord(KEY, size_bytes=1)


def test_a_marker_without_its_workspace_is_not_trusted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    make_ready(store)
    os.rename(store.workspace(KEY), tmp_path / "elsewhere")
    assert store.read_ready(KEY) is None


def test_sweep_removes_unmarked_workspaces_nobody_is_installing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    make_ready(store, "a" * 32)
    store.workspace("b" * 32).mkdir()  # crashed install: no marker, lock free
    store.workspace("c" * 32).mkdir()  # install under way in another process
    (store.trash / "old").mkdir()
    child = hold_flock(store.install_lock("c" * 32).path, shared=False)
    try:
        assert store.sweep() == ["b" * 32]
    finally:
        child.communicate("")
    assert store.workspace("a" * 32).is_dir()
    assert not store.workspace("b" * 32).exists()
    assert store.workspace("c" * 32).is_dir()
    assert list(store.trash.iterdir()) == []


def test_entries_list_ready_failed_installing_and_incomplete_environments(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    ready, failed, installing, incomplete, unreadable = (c * 32 for c in "rfiuz")
    make_ready(store, ready)
    store.write_failed(failed, "Ray would refuse this pixi environment's workers: ...")
    store.workspace(installing).mkdir()
    store.workspace(incomplete).mkdir()
    store.workspace(unreadable).mkdir()
    (store.envs / f"{unreadable}.json").write_text("{not json")
    used = hold_flock(store.use_lock(ready).path, shared=True)
    busy = hold_flock(store.install_lock(installing).path, shared=False)
    try:
        entries = {e.key: e for e in store.entries()}
    finally:
        used.communicate("")
        busy.communicate("")
    assert list(entries)[0] == ready  # the ready ones first
    assert {k: (e.state, e.in_use) for k, e in entries.items()} == {
        ready: (EntryState.READY, True), failed: (EntryState.FAILED, False),
        installing: (EntryState.INSTALLING, True), incomplete: (EntryState.INCOMPLETE, False),
        unreadable: (EntryState.INCOMPLETE, False)}
    assert entries[ready].record == ReadyRecord(ready, size_bytes=10_000)
    assert entries[ready].size_bytes == 10_000 and entries[failed].size_bytes == 0
    assert entries[failed].failure == "Ray would refuse this pixi environment's workers: ..."
    assert entries[ready].failure is None and entries[failed].record is None


def test_an_empty_or_missing_store_has_no_entries(tmp_path: Path) -> None:
    assert Store(tmp_path / "nowhere").entries() == []
    store = Store(tmp_path / "store")
    store.ensure()
    assert store.entries() == []


def test_an_entry_another_agent_uses_is_not_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    make_ready(store)
    child = hold_flock(store.use_lock(KEY).path, shared=True)
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
    store.ensure()
    assert store.delete_if_unused(KEY, background=False) is True
    make_ready(store)
    store.discard(KEY)
    store.discard(KEY)
    assert store.read_ready(KEY) is None


def test_the_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "x.lock")
    child = hold_flock(lock.path, shared=False)
    assert lock.try_acquire() is None
    child.kill()
    child.wait()
    held = lock.try_acquire()
    assert held is not None
    held.release()


def test_a_held_lock_is_released_on_leaving_its_block(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "w.lock")
    with lock.acquire() as held:
        assert lock.try_acquire() is None and not held.released
    assert held.released
    with pytest.raises(RuntimeError), lock.acquire():
        raise RuntimeError("the holder fails")
    again = lock.try_acquire()
    assert again is not None, "an exception left the lock taken"
    again.release()


def test_releasing_twice_is_harmless_and_a_released_lock_has_no_descriptor(
        tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "r.lock")
    held = lock.acquire()
    held.release()
    held.release()  # must not close a descriptor the process has since reused
    with pytest.raises(ValueError, match="released"):
        held.fd  # noqa: B018
    lock.acquire().release()


def test_a_child_given_the_descriptor_holds_the_lock_until_it_ends(tmp_path: Path) -> None:
    """As an install's pixi does: the parent lets go, the orphaned child keeps the lock."""
    lock = FileLock(tmp_path / "c.lock")
    with lock.acquire() as held:
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, pass_fds=(held.fd,))
    try:
        assert lock.try_acquire() is None
    finally:
        child.communicate(b"")
    after = lock.try_acquire()
    assert after is not None
    after.release()


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
        held = await lock.acquire_async(shared=shared)
        waiter = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0)  # let the waiter start; the loop must stay responsive
        assert not waiter.done()
        held.release()
        (await asyncio.wait_for(waiter, 10)).release()

    asyncio.run(scenario())


def test_a_store_path_that_is_a_file_is_reported_with_the_fix(tmp_path: Path) -> None:
    from ray_pixi.errors import PixiStoreError

    (tmp_path / "store").write_text("not a directory")
    with pytest.raises(PixiStoreError) as e:
        Store(tmp_path / "store").ensure()
    assert f"store {tmp_path / 'store'} cannot be used on this node" in str(e.value)
    assert "not a directory" in str(e.value) and "RAY_PIXI_STORE_DIR" in str(e.value)


def test_a_read_only_store_is_reported_as_such(tmp_path: Path) -> None:
    from ray_pixi.errors import PixiStoreError

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(PixiStoreError, match="it is on a read-only filesystem"):
            Store(mount / "store").ensure()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def make_sized(store: Store, key: str, size: int, age: float) -> None:
    make_ready(store, key)
    store.write_ready(ReadyRecord(key, size_bytes=size))
    then = os.path.getmtime(store.envs / f"{key}.json") - age
    os.utime(store.envs / f"{key}.json", (then, then))


def test_the_cap_evicts_least_recently_used_environments_nobody_holds(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    oldest, old, held, new = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    make_sized(store, oldest, 400, age=400)
    make_sized(store, held, 400, age=300)  # oldest but one, yet another agent holds it
    make_sized(store, old, 400, age=200)
    make_sized(store, new, 400, age=0)
    child = hold_flock(store.use_lock(held).path, shared=True)
    try:
        evicted = store.evict_over_cap(1000, keep=frozenset({new}))
    finally:
        child.communicate("")
    assert evicted == [oldest, old]
    assert {e.key for e in store.entries()} == {held, new}


def test_the_cap_counts_every_environment_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    make_sized(store, "a" * 32, 600, age=10)
    assert store.evict_over_cap(1000) == []
    make_sized(store, "b" * 32, 600, age=0)  # as if another Ray session installed it
    assert store.evict_over_cap(1000) == ["a" * 32]


NOBODY = 65534


def as_uid(uid: int, code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as another uid with the system's Python (the test's own lives under a
    home directory other uids cannot enter); the store needs only the standard library."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} to run as uid {uid}")
    return subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                          user=uid, group=uid)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory another uid can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ray-pixi-shared-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_shared_store_lets_another_uid_take_its_locks(world_dir: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a child as another uid")
    root = world_dir / "store"
    root.mkdir()
    os.chmod(root, 0o1777)  # as the payload init container leaves a shared volume
    store = Store(root)
    store.ensure()
    held = store.use_lock(KEY).acquire(shared=True)  # created by this uid
    held.release()
    # The checkout may sit where other uids cannot enter (a mktemp -d clone is 0700).
    src = world_dir / "src"
    shutil.copytree(SRC / "ray_pixi", src / "ray_pixi",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(src)!r})
        from ray_pixi.store import Store
        s = Store({str(root)!r}); s.ensure()
        s.use_lock({KEY!r}).acquire(shared=True).release()
        s.install_lock("other" * 4).acquire().release()
        print("ok")
    """)
    done = as_uid(NOBODY, code)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_private_store_stays_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.ensure()
    held = store.use_lock(KEY).acquire()
    held.release()
    assert os.stat(store.locks).st_mode & 0o022 == 0
    assert os.stat(store.use_lock(KEY).path).st_mode & 0o022 == 0


def test_many_waiters_do_not_starve_the_loops_executor(tmp_path: Path) -> None:
    """Sixteen setups waiting on locks another process holds leave the loop's default
    executor free for the holder's file work (it has 6 threads on 2 cores)."""
    import asyncio

    locks = [FileLock(tmp_path / f"{i}.lock") for i in range(16)]
    children = [hold_flock(lock.path, shared=False) for lock in locks]

    async def scenario() -> int:
        waiters = [asyncio.ensure_future(lock.acquire_async()) for lock in locks]
        await asyncio.sleep(0)
        # The executor still runs work while all sixteen wait.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 10) == 42
        for child in children:
            child.communicate("")
        held_locks = await asyncio.wait_for(asyncio.gather(*waiters), 30)
        for held in held_locks:
            held.release()
        return len(held_locks)

    assert asyncio.run(scenario()) == 16


def test_a_cancelled_waiter_leaves_the_lock_free(tmp_path: Path) -> None:
    import asyncio

    lock = FileLock(tmp_path / "c.lock")
    child = hold_flock(lock.path, shared=False)

    async def scenario() -> None:
        waiter = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        child.communicate("")  # the holder lets go; the cancelled waiter's thread gets it
        deadline = asyncio.get_running_loop().time() + 10
        while (held := lock.try_acquire()) is None:
            assert asyncio.get_running_loop().time() < deadline, "the lock stayed taken"
            await asyncio.sleep(0.05)  # poll until the abandoned grant is dropped
        held.release()

    asyncio.run(scenario())
