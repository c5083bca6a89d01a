"""How nodes agree on one solution through the cluster's key-value store, driven with an
in-memory store standing in for the GCS: concurrent first setups solve once, a dead
solver is taken over, a restarted cluster gets a node's kept solution, a failed solve
releases its claim, and a node that cannot share solves alone and says why."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from ray_pixi.sharing import SharedSolutions
from ray_pixi.solution import Claim, claim_kv_key, decode_lock, encode_lock, lock_kv_key
from ray_pixi.store import Store

KEY = "s" * 32


class MemoryBoard:
    """The GCS key-value store's semantics: put-if-absent adds only a missing key."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lost_claims = 0
        self.contended = threading.Event()  # set once two nodes lost the claim
        self.fail = False
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        if self.fail:
            raise ConnectionError("GCS unreachable")
        return self.data.get(key)

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        with self._lock:
            if key in self.data:
                if key.startswith(b"claim/"):
                    self.lost_claims += 1
                    if self.lost_claims >= 2:
                        self.contended.set()
                return False
            self.data[key] = value
            return True

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)


def node(board: MemoryBoard | None, name: str, **kw: float) -> SharedSolutions:
    def connect(address: str) -> MemoryBoard:
        if board is None:
            raise ConnectionError("no GCS here")
        return board
    return SharedSolutions("127.0.0.1:6379", name, connect=connect,
                           **{"poll": 0.0, **kw})  # type: ignore[arg-type]


def store(tmp_path: Path, name: str) -> Store:
    s = Store(tmp_path / name)
    s.ensure()
    return s


class Solver:
    def __init__(self, lock: str = "version: 6\n", gate: threading.Event | None = None):
        self.lock, self.gate, self.calls = lock, gate, 0
        self.sources: list[str] = []

    async def __call__(self, source: str) -> str:
        self.sources.append(source)
        self.calls += 1
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 30)
        return self.lock


LOG = logging.getLogger("test-sharing")


class PublishedMeanwhile(MemoryBoard):
    """Another node publishes its lock and releases its claim right after this node's
    first look found no lock: the interleaving that once made a node solve a second time."""

    def __init__(self) -> None:
        super().__init__()
        self.data[claim_kv_key(KEY)] = b"held by the other node"
        self._looked = False

    def get(self, key: bytes) -> bytes | None:
        value = super().get(key)
        if key == lock_kv_key(KEY) and not self._looked:
            self._looked = True
            self.data[lock_kv_key(KEY)] = encode_lock("version: 6\n# theirs\n")
            del self.data[claim_kv_key(KEY)]
        return value


def test_a_claim_freed_by_a_publisher_after_our_look_is_not_a_reason_to_solve(
    tmp_path: Path,
) -> None:
    board = PublishedMeanwhile()
    solver = Solver()
    got = asyncio.run(node(board, "n1").obtain(key=KEY, store=store(tmp_path, "n1"),
                                               solve=solver, logger=LOG))
    assert solver.calls == 0
    assert (got.source, got.lock) == ("shared", "version: 6\n# theirs\n")
    assert claim_kv_key(KEY) not in board.data  # the claim it took to look again is released


def test_concurrent_first_setups_on_three_nodes_solve_once(tmp_path: Path) -> None:
    board = MemoryBoard()
    solver = Solver(gate=board.contended)  # solves until the two others wait on its claim

    async def main() -> list[tuple[str, str]]:
        got = await asyncio.gather(*(
            node(board, f"n{i}").obtain(key=KEY, store=store(tmp_path, f"n{i}"),
                                        solve=solver, logger=LOG) for i in range(3)))
        return [(s.lock, s.source) for s in got]

    got = asyncio.run(main())
    assert solver.calls == 1
    assert sorted(source for _, source in got) == ["shared", "shared", "solved"]
    assert {lock for lock, _ in got} == {"version: 6\n"}
    assert decode_lock(board.data[lock_kv_key(KEY)]) == "version: 6\n"
    assert claim_kv_key(KEY) not in board.data  # released
    assert all(store(tmp_path, f"n{i}").read_solution(KEY) == "version: 6\n" for i in range(3))


def test_a_published_solution_is_used_as_it_is(tmp_path: Path) -> None:
    board = MemoryBoard()
    asyncio.run(node(board, "a").obtain(key=KEY, store=store(tmp_path, "a"),
                                        solve=Solver("first\n"), logger=LOG))
    solver = Solver("second\n")
    got = asyncio.run(node(board, "b").obtain(key=KEY, store=store(tmp_path, "b"),
                                              solve=solver, logger=LOG))
    assert (got.lock, got.source, solver.calls) == ("first\n", "shared", 0)


def test_a_dead_solvers_claim_is_taken_over(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    board = MemoryBoard()
    board.data[claim_kv_key(KEY)] = Claim("10.0.0.9", 7).encode()  # never beats again
    solver = Solver()
    with caplog.at_level(logging.INFO, LOG.name):
        got = asyncio.run(node(board, "a", stale_after=0.0).obtain(
            key=KEY, store=store(tmp_path, "a"), solve=solver, logger=LOG))
    assert (got.source, solver.calls, solver.sources) == ("solved", 1, ["solved"])
    assert "Node 10.0.0.9 stopped solving" in caplog.text
    assert "waiting for node 10.0.0.9" in caplog.text


def test_a_restarted_cluster_gets_a_nodes_kept_solution(tmp_path: Path) -> None:
    kept = store(tmp_path, "a")
    kept.write_solution(KEY, "kept\n")
    board = MemoryBoard()  # a new GCS: empty
    solver = Solver()
    got = asyncio.run(node(board, "a").obtain(key=KEY, store=kept, solve=solver, logger=LOG))
    assert (got.lock, got.source, solver.calls) == ("kept\n", "kept", 0)
    assert decode_lock(board.data[lock_kv_key(KEY)]) == "kept\n"
    # A node that kept another solution of an earlier cluster takes the cluster's.
    other = store(tmp_path, "b")
    other.write_solution(KEY, "older\n")
    got = asyncio.run(node(board, "b").obtain(key=KEY, store=other, solve=solver, logger=LOG))
    assert (got.lock, got.source) == ("kept\n", "shared")
    assert other.read_solution(KEY) == "kept\n"


def test_a_failed_solve_releases_its_claim(tmp_path: Path) -> None:
    board = MemoryBoard()

    async def broken(source: str) -> str:
        raise RuntimeError("No candidates were found for nothing-such *")

    with pytest.raises(RuntimeError, match="No candidates"):
        asyncio.run(node(board, "a").obtain(key=KEY, store=store(tmp_path, "a"),
                                            solve=broken, logger=LOG))
    assert board.data == {}


@pytest.mark.parametrize("why", ["no GCS", "GCS fails", "no address"])
def test_a_node_that_cannot_share_solves_alone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, why: str,
) -> None:
    board = MemoryBoard()
    board.fail = why == "GCS fails"
    shared = {"no GCS": node(None, "a"), "GCS fails": node(board, "a"),
              "no address": SharedSolutions(None, "a")}[why]
    solver = Solver()
    s = store(tmp_path, "a")
    with caplog.at_level(logging.WARNING, LOG.name):
        got = asyncio.run(shared.obtain(key=KEY, store=s, solve=solver, logger=LOG))
        again = asyncio.run(shared.obtain(key=KEY, store=s, solve=solver, logger=LOG))
    assert (got.source, again.source, again.lock, solver.calls) == \
        ("solved-alone", "kept", "version: 6\n", 1)
    assert solver.sources == ["solved-alone"]
    assert "cannot share pixi solutions with the cluster's other nodes" in caplog.text
    reason = {"no GCS": "ConnectionError: no GCS here", "GCS fails": "GCS unreachable",
              "no address": "not a Ray runtime_env agent"}[why]
    assert reason in caplog.text


class CountingBoard(MemoryBoard):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, key: bytes) -> bytes | None:
        self.calls += 1
        return super().get(key)


def test_an_unreadable_claim_is_taken_over_not_spun_on(tmp_path: Path) -> None:
    """A claim in a format this node cannot read (another release's) is stale: the node
    removes it and solves, instead of looping on a claim it can neither read nor win."""
    board = CountingBoard()
    board.data[claim_kv_key(KEY)] = b"\xff not a claim"
    solver = Solver()
    got = asyncio.run(node(board, "n1").obtain(key=KEY, store=store(tmp_path, "n1"),
                                               solve=solver, logger=LOG))
    assert (solver.calls, got.source) == (1, "solved")
    assert board.calls < 10, board.calls
    assert decode_lock(board.data[lock_kv_key(KEY)]) == "version: 6\n"
