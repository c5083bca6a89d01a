"""The content-addressed environment store on a node's disk. Knows nothing of Ray.

Layout under the store root (outside any Ray session, so environments survive
`ray stop`/`ray start` and pod restarts when the root is on a persistent volume):

    envs/<key>/           the pixi workspace; pixi installs into envs/<key>/.pixi/envs/<env>
    envs/<key>.json       ready record (ray_pixi.records): written last, atomically; only a
                          marked env is used
    envs/<key>.failed     a deterministic failure (version mismatch) to re-raise at once
    logs/install-<key>-<time>-<pid>.log   each install attempt's output (the last few kept)
    locks/<key>.lock      held exclusively while one process installs or deletes <key>
    locks/<key>.use       held shared by every agent that uses <key>
    pixi/<version>/pixi   pixi releases bootstrapped on this node
    trash/                entries being deleted

A store is as shared as its root: when the root is group- or world-writable (a volume that
Ray pods of several uids share, prepared so by the KubeRay add-on or an admin), the store's
directories and lock files get the same write bits, so any of those uids can take the
locks; otherwise they are private to the user running Ray.

Environments are not relocatable (pixi records their prefix), so they are installed in
place and never renamed while in use; a crash leaves a workspace without a marker, which
is swept before anything trusts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import json
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; ray-pixi targets POSIX nodes
    fcntl = None  # type: ignore[assignment]

from ray_pixi.errors import PixiStoreError
from ray_pixi.records import ReadyRecord
from ray_pixi.settings import STORE_DIR

__all__ = [
    "EntryState", "FileLock", "HeldLock", "Store", "StoreEntry", "directory_size", "disk_usage",
]

_SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH
# Characters an environment's prefix must not hold: bash expands them inside the double
# quotes where pixi's activation puts the prefix, and conda packages embed the prefix in
# quoted strings (python's _sysconfigdata, scripts) when they are installed.
_SHELL_EXPANDED = "$`\\\"'\n"


def _walk(*roots: Path) -> Iterator[tuple[os.stat_result, bool]]:
    """(stat, is a directory) of every entry under `roots`, never following symlinks;
    what vanishes or cannot be read meanwhile is skipped."""
    stack = [str(r) for r in roots]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if is_dir:
                        stack.append(entry.path)
                    yield st, is_dir
        except OSError:
            continue


def _bytes(st: os.stat_result) -> int:
    return getattr(st, "st_blocks", 0) * 512 or st.st_size


def directory_size(path: Path) -> int:
    """Bytes that deleting `path` frees: each inode once, and no file that is hard-linked
    from outside `path`. pixi (and uv) hard-link packages from the shared package cache,
    which deleting an environment does not free; counting those files would make Ray's
    cache cap evict environments long before the disk holds that much."""
    files: dict[tuple[int, int], list[int]] = {}  # inode -> [links under path, st_nlink, bytes]
    total = 0
    for st, is_dir in _walk(path):
        if is_dir:
            total += _bytes(st)
            continue
        seen = files.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, _bytes(st)])
        seen[0] += 1
    return total + sum(size for here, nlink, size in files.values() if here >= nlink)


def disk_usage(*roots: Path) -> int:
    """Bytes the trees under `roots` occupy together: each inode once, however many links
    it has inside them (a package linked from pixi's cache into an environment counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st, is_dir in _walk(*roots):
        if not is_dir:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        total += _bytes(st)
    return total


def _settle(future: asyncio.Future[None], fd: int, error: BaseException | None) -> None:
    if future.cancelled():
        os.close(fd)  # its waiter gave up: drop the lock it was handed
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


class HeldLock:
    """A lock this process holds. Released by `release()` (idempotent) or on leaving its
    `with` block, so no path forgets it; `fd` is its descriptor, for child processes that
    must hold the lock as long as they live (`process.run_logged`'s `hold_fds`)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("this lock was released: its descriptor is closed")
        return self._fd

    @property
    def released(self) -> bool:
        return self._fd is None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock (a child's copy keeps it)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLock:
    """An flock on a file: released by the kernel when the holder dies, so a crashed
    install never leaves the store locked. Opened read-only (flock needs no write access),
    so a lock file another uid created can still be taken."""

    def __init__(self, path: Path, mode: int = 0o644) -> None:
        self.path = path
        self.mode = mode

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, self.mode)
        with contextlib.suppress(OSError):  # only the creator may; the umask may have cut bits
            os.fchmod(fd, self.mode)
        return fd

    def try_acquire(self, shared: bool = False) -> HeldLock | None:
        fd = self._open()
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return HeldLock(fd)

    def acquire(self, shared: bool = False) -> HeldLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return HeldLock(fd)

    async def acquire_async(self, shared: bool = False) -> HeldLock:
        """Wait for the lock without blocking the agent's event loop.

        The wait happens in a thread of its own, never in the loop's default executor: a
        dozen setups waiting on other processes' locks would otherwise take every executor
        thread, and the lock holder's own file work (which runs there) could never finish.
        If the waiter is cancelled, the lock is released as soon as the thread gets it.
        """
        held = self.try_acquire(shared)
        if held is not None:
            return held
        fd = self._open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting coroutine
                error: BaseException | None = e
            else:
                error = None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, future, fd, error)

        threading.Thread(target=wait, name=f"ray-pixi-lock-{self.path.name}",
                         daemon=True).start()
        try:
            await future  # cancelling the waiter cancels the future: _settle drops the lock
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                os.close(fd)  # granted just before the cancellation arrived
            raise
        except BaseException:
            os.close(fd)
            raise
        return HeldLock(fd)


class EntryState(enum.Enum):
    """Where an environment in the store stands."""

    READY = "ready"  # a readable ready record beside its workspace
    FAILED = "failed"  # a remembered deterministic failure, re-raised at once
    INSTALLING = "installing"  # no ready record yet; a process holds its install lock
    INCOMPLETE = "incomplete"  # no ready record and nobody installing: the sweep removes it


@dataclass(frozen=True)
class StoreEntry:
    """One environment. `in_use`: a process holds its use lock (ready) or its install
    lock (installing), so deleting it now would be refused."""

    key: str
    state: EntryState
    size_bytes: int
    last_used: float
    in_use: bool
    record: ReadyRecord | None = None
    failure: str | None = None


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """Paths, locks, markers and deletion of one store root. Constructing it touches no
    disk; `ensure` creates the layout and says, as a PixiStoreError, why it cannot."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.envs = self.root / "envs"
        self.locks = self.root / "locks"
        self.trash = self.root / "trash"
        self.logs = self.root / "logs"
        # The cluster solutions this node installed from, by solution key: after a cluster
        # restart (a new GCS, an empty key-value store) the node offers them again, so it
        # keeps serving the environments it already has.
        self.solutions = self.root / "solutions"
        self._dir_mode = 0o755
        self._file_mode = 0o644

    def ensure(self) -> None:
        """Create the store's directories (as shared as the root) and check that this
        process can write there. Blocking."""
        special = sorted(set(str(self.root)) & set(_SHELL_EXPANDED))
        if special:
            raise PixiStoreError(
                f"ray-pixi's environment store {self.root} cannot be used: its path contains "
                f"{''.join(special)!r}, which pixi's activation script (bash) would expand or "
                "run, and which breaks the quoted prefix conda packages write into their "
                f"files. Set {STORE_DIR} to a path without $ ` \\ \" ' or line breaks."
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shared = stat.S_IMODE(self.root.stat().st_mode) & _SHARED_BITS
            self._dir_mode = 0o755 | shared | (stat.S_ISVTX if shared & stat.S_IWOTH else 0)
            self._file_mode = 0o644 | shared
            for d in (self.envs, self.locks, self.trash, self.logs, self.solutions):
                if not d.is_dir():
                    d.mkdir(exist_ok=True)
                    with contextlib.suppress(OSError):
                        os.chmod(d, self._dir_mode)
                fd, probe = tempfile.mkstemp(dir=d, prefix=".ray-pixi-probe-")
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise PixiStoreError(_unusable(self.root, e)) from None

    # -- paths ---------------------------------------------------------------------------
    def workspace(self, key: str) -> Path:
        return self.envs / key

    def _ready_path(self, key: str) -> Path:
        return self.envs / f"{key}.json"

    def progress_path(self, key: str) -> Path:
        """What an install under way is doing (`ray_pixi.progress`), beside its workspace."""
        return self.envs / f"{key}.progress"

    def _failed_path(self, key: str) -> Path:
        return self.envs / f"{key}.failed"

    def install_log(self, key: str, attempt: str) -> Path:
        return self.logs / f"install-{key}-{attempt}.log"

    def install_logs(self, key: str | None = None) -> list[Path]:
        """Install logs, oldest first (all keys, or one)."""
        pattern = f"install-{key or '*'}-*.log"
        return sorted(self.logs.glob(pattern), key=lambda p: p.name.rsplit("-", 2)[-2:])

    def prune_install_logs(self, key: str, keep: int = 5) -> None:
        for old in self.install_logs(key)[:-keep]:
            old.unlink(missing_ok=True)

    def solution_path(self, solution: str) -> Path:
        return self.solutions / f"{solution}.lock"

    def read_solution(self, solution: str) -> str | None:
        try:
            return self.solution_path(solution).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def write_solution(self, solution: str, lock: str) -> None:
        _write_atomic(self.solution_path(solution), lock)
        with contextlib.suppress(OSError):
            os.chmod(self.solution_path(solution), self._file_mode)

    def solve_lock(self, solution: str) -> FileLock:
        """Held while this node obtains `solution`: agents sharing a store solve once."""
        return FileLock(self.locks / f"solve-{solution}.lock", self._file_mode)

    def lock_file(self, key: str) -> Path | None:
        """The pixi.lock the ready environment `key` was installed from."""
        record = self.read_ready(key)
        if record is None:
            return None
        parent = PurePosixPath(record.manifest).parent if record.mode == "project" \
            and record.manifest else PurePosixPath(".")
        path = self.workspace(key) / parent / "pixi.lock"
        return path if path.is_file() else None

    def install_lock(self, key: str) -> FileLock:
        return FileLock(self.locks / f"{key}.lock", self._file_mode)

    def use_lock(self, key: str) -> FileLock:
        return FileLock(self.locks / f"{key}.use", self._file_mode)

    def cache_lock(self) -> FileLock:
        """Held shared by every `pixi install` the plugin runs, exclusively while pixi's
        package cache is pruned (ray_pixi.disk)."""
        return FileLock(self.locks / "pixi-cache.lock", self._file_mode)

    def bootstrap_lock(self, version: str) -> FileLock:
        return FileLock(self.locks / f"pixi-{version}.lock", self._file_mode)

    @property
    def pixi_dir(self) -> Path:
        return self.root / "pixi"

    # -- markers -------------------------------------------------------------------------
    def read_ready(self, key: str) -> ReadyRecord | None:
        """The ready record, or None if the entry is not a complete install (no record,
        one that cannot be read or names another key, or no workspace)."""
        try:
            record = ReadyRecord.from_json(json.loads(self._ready_path(key).read_text()))
        except (OSError, ValueError):
            return None
        if record.key != key or not self.workspace(key).is_dir():
            return None
        return record

    def write_ready(self, record: ReadyRecord) -> None:
        _write_atomic(self._ready_path(record.key), json.dumps(record.to_json(), indent=1))

    def touch(self, key: str) -> None:
        """Record a use, for `ray-pixi envs list` and garbage collection by age."""
        with contextlib.suppress(OSError):
            os.utime(self._ready_path(key))

    def read_failed(self, key: str) -> str | None:
        try:
            return self._failed_path(key).read_text()
        except OSError:
            return None

    def write_failed(self, key: str, message: str) -> None:
        _write_atomic(self._failed_path(key), message)

    # -- removal -------------------------------------------------------------------------
    def discard(self, key: str) -> None:
        """Remove an entry's marker and files. The caller holds its install lock. The
        marker goes first, so a crash part-way leaves an unmarked (untrusted) workspace."""
        self._ready_path(key).unlink(missing_ok=True)
        self.progress_path(key).unlink(missing_ok=True)  # what a crashed install said
        workspace = self.workspace(key)
        if workspace.exists():
            doomed = self.trash / f"{key}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(workspace, doomed)
            except OSError:
                shutil.rmtree(workspace, ignore_errors=True)
            else:
                shutil.rmtree(doomed, ignore_errors=True)

    def discard_in_background(self, key: str) -> None:
        """Like discard, but the slow recursive delete runs in a thread: deletion is
        called on the agent's event loop."""
        self._ready_path(key).unlink(missing_ok=True)
        workspace = self.workspace(key)
        if not workspace.exists():
            return
        doomed = self.trash / f"{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(workspace, doomed)
        except OSError:
            return
        threading.Thread(
            target=shutil.rmtree, args=(doomed,), kwargs={"ignore_errors": True}, daemon=True
        ).start()

    def delete_if_unused(self, key: str, background: bool = True) -> bool:
        """Delete `key` unless another process installs or uses it. Never raises on an
        entry that is already gone. The caller must have released its own use lock."""
        installing = self.install_lock(key).try_acquire()
        if installing is None:
            return False
        with installing:
            using = self.use_lock(key).try_acquire()
            if using is None:
                return False
            with using:
                (self.discard_in_background if background else self.discard)(key)
                self._failed_path(key).unlink(missing_ok=True)
                for log in self.install_logs(key):
                    log.unlink(missing_ok=True)
                return True

    def evict_over_cap(
        self,
        cap_bytes: int,
        keep: frozenset[str] = frozenset(),
        limit: int | None = None,
        background: bool = True,
    ) -> list[str]:
        """Delete least-recently-used environments until the store's ready environments
        total at most `cap_bytes` (or `limit` are deleted), skipping `keep` and any
        environment a process uses or installs (its locks say so). Counts every
        environment in the store, whatever Ray session or node made it. Returns the keys
        deleted. Blocking."""
        entries = sorted(self._ready_entries(), key=lambda e: e.last_used)
        total = sum(e.size_bytes for e in entries)
        evicted: list[str] = []
        for entry in entries:
            if total <= cap_bytes or (limit is not None and len(evicted) >= limit):
                break
            if entry.key in keep or entry.in_use:
                continue
            if self.delete_if_unused(entry.key, background=background):
                total -= entry.size_bytes
                evicted.append(entry.key)
        return evicted

    def sweep(self) -> list[str]:
        """Remove what crashed or cancelled installs and deletions left behind: workspaces
        with no ready marker that nobody is installing, and the trash."""
        removed: list[str] = []
        if not self.envs.is_dir():
            return removed
        for path in self.envs.iterdir():
            if not path.is_dir() or self.read_ready(path.name) is not None:
                continue
            installing = self.install_lock(path.name).try_acquire()
            if installing is None:
                continue  # an install is under way
            with installing:
                if self.read_ready(path.name) is None:
                    self.discard(path.name)
                    removed.append(path.name)
        for path in self.trash.iterdir() if self.trash.is_dir() else ():
            shutil.rmtree(path, ignore_errors=True)
        return removed

    # -- listing -------------------------------------------------------------------------
    def entries(self) -> list[StoreEntry]:
        """Every environment in the store: the ready ones first, then remembered failures
        and workspaces without a ready record (an install under way, or what an
        interrupted one left); each part by key."""
        ready = self._ready_entries()
        known = {e.key for e in ready}
        others = []
        for path in sorted(self.envs.iterdir()) if self.envs.is_dir() else ():
            key = path.name.split(".", 1)[0]
            if key in known or path.name.startswith("."):
                continue
            entry = self._unready_entry(key, path)
            if entry is not None:
                others.append(entry)
                known.add(key)
        return ready + others

    def _ready_entries(self) -> list[StoreEntry]:
        """The ready environments, by key: what the store's cap counts."""
        result = []
        for path in sorted(self.envs.glob("*.json")):
            key = path.name[: -len(".json")]
            ready = self.read_ready(key)
            if ready is None:
                continue
            probe = self.use_lock(key).try_acquire()
            if probe is not None:
                probe.release()
            try:
                last_used = path.stat().st_mtime
            except OSError:
                continue
            result.append(StoreEntry(key, EntryState.READY, ready.size_bytes, last_used,
                                     in_use=probe is None, record=ready))
        return result

    def _unready_entry(self, key: str, path: Path) -> StoreEntry | None:
        """The failure or unfinished workspace at `path`; None for anything else, or if
        it is gone meanwhile."""
        failure = None
        if path.name == f"{key}.failed":
            state, in_use, failure = EntryState.FAILED, False, self.read_failed(key) or ""
        elif path.is_dir():
            probe = self.install_lock(key).try_acquire()
            if probe is not None:
                probe.release()
            in_use = probe is None
            state = EntryState.INSTALLING if in_use else EntryState.INCOMPLETE
        else:
            return None
        try:
            last_used = path.stat().st_mtime
        except OSError:
            return None
        return StoreEntry(key, state, 0, last_used, in_use, failure=failure)

    @contextlib.asynccontextmanager
    async def installing(self, key: str) -> AsyncIterator[HeldLock]:
        """Hold `key`'s install lock; its `fd` is for the install's child processes to
        inherit (so an orphaned one keeps the lock until it ends)."""
        with await self.install_lock(key).acquire_async() as held:
            yield held


def _unusable(root: Path, error: OSError) -> str:
    """Why the store at `root` cannot be used, and the fix, for every pixi request."""
    reason = error.strerror or str(error)
    if error.errno == errno.EROFS:
        reason = "it is on a read-only filesystem"
    elif error.errno in (errno.EACCES, errno.EPERM):
        try:
            owner = (root if root.exists() else root.parent).stat().st_uid
            reason = f"uid {os.getuid()} may not write there (owned by uid {owner})"
        except OSError:
            reason = f"uid {os.getuid()} may not write there"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = f"{error.filename or root} is not a directory"
    elif error.errno == errno.ENOSPC:
        reason = "its filesystem is full"
    return (
        f"ray-pixi's environment store {root} cannot be used on this node: {reason}. Set "
        f"{STORE_DIR} to a directory the Ray processes can write (on KubeRay: check the "
        "ray-pixi volume of this Ray pod), or free the disk; jobs without runtime_env['pixi'] "
        "are not affected."
    )
