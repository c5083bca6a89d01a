"""How the nodes of one cluster agree on one solution of a spec without a lock: through the
GCS's internal key-value store, which every node's runtime_env agent reaches at the
`--gcs-address` Ray gives it, on every Ray release from 2.10 (`ray_pixi.rayapi.gcs_kv`).

Per solution key (`ray_pixi.solution`), in namespace `ray_pixi`:

- `lock/<key>`: the solution, written once: put-if-absent, so the first writer wins and
  every node installs what it holds. That alone keeps nodes consistent.
- `claim/<key>`: who is solving, also put-if-absent, so concurrent first setups on many
  nodes make one solve instead of a thundering herd on the channel. The claimant solves as
  it installs (`solve`) and publishes the lock pixi wrote. The claimant bumps it
  while it solves; the others wait for `lock/<key>`, and take over if the claim stops
  moving (a dead claimant) or disappears without a lock (a failed solve: each node then
  solves and reports pixi's error itself).

A node's store keeps the solutions it installed (`Store.solution_path`), and offers one to
a cluster whose key-value store has none (a restarted cluster), so its ready environments
stay the cluster's. A node that cannot reach the key-value store (a Ray without the client,
a GCS that does not answer) solves alone, says so in the job's setup log, and never fails
the job for it.

Runs on the agent's event loop: every key-value call and file read runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ray_pixi import rayapi, settings
from ray_pixi.solution import (
    KV_NAMESPACE,
    Claim,
    ClaimWatch,
    Solution,
    claim_kv_key,
    decode_lock,
    encode_lock,
    lock_kv_key,
)
from ray_pixi.store import Store

__all__ = ["GCS_ADDRESS_FLAG", "Board", "GcsBoard", "SharedSolutions", "SharingFailed", "Solve"]

GCS_ADDRESS_FLAG = "gcs-address"
#: Solves for the cluster and returns the lock; called with how the node got it
#: ("solved" for the cluster, or "solved-alone").
Solve = Callable[[str], Awaitable[str]]
_KV_TIMEOUT_SECONDS = 10.0


class SharingFailed(Exception):
    """The key-value store did not answer, or held something unreadable."""


class Board(Protocol):
    """The key-value operations sharing needs; blocking."""

    def get(self, key: bytes) -> bytes | None: ...
    def put_if_absent(self, key: bytes, value: bytes) -> bool: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...


class GcsBoard:
    """`Board` over Ray's GcsClient (`ray_pixi.rayapi.gcs_kv`)."""

    def __init__(self, gcs: Any) -> None:
        self._gcs = gcs

    def get(self, key: bytes) -> bytes | None:
        value = self._gcs.internal_kv_get(key, KV_NAMESPACE, timeout=_KV_TIMEOUT_SECONDS)
        return None if value is None else bytes(value)

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        # Returns how many keys it added: 0 when the key was there (and kept).
        added = self._gcs.internal_kv_put(key, value, False, KV_NAMESPACE,
                                          timeout=_KV_TIMEOUT_SECONDS)
        return bool(added)

    def put(self, key: bytes, value: bytes) -> None:
        self._gcs.internal_kv_put(key, value, True, KV_NAMESPACE, timeout=_KV_TIMEOUT_SECONDS)

    def delete(self, key: bytes) -> None:
        self._gcs.internal_kv_del(key, False, KV_NAMESPACE, timeout=_KV_TIMEOUT_SECONDS)


def _connect(address: str) -> Board:
    return GcsBoard(rayapi.gcs_kv(address))


class SharedSolutions:
    """One per agent: the cluster's key-value store (connected once, lazily), or why this
    node has none. `obtain` returns the solution this node installs."""

    def __init__(self, gcs_address: str | None, node: str, *, poll: float = 0.5,
                 beat: float = 2.0, stale_after: float = 30.0,
                 connect: Callable[[str], Board] = _connect) -> None:
        self._address, self._node, self._connect = gcs_address, node, connect
        self._poll, self._beat, self._stale_after = poll, beat, stale_after
        self._board: Board | None = None
        self._unavailable: str | None = None if gcs_address else (
            f"this process has no Ray GCS address (--{GCS_ADDRESS_FLAG}): it is not a Ray "
            "runtime_env agent")
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_agent(cls, node: str) -> SharedSolutions:
        return cls(settings.agent_flag(GCS_ADDRESS_FLAG), node)

    async def _get_board(self) -> Board | None:
        if self._board is None and self._unavailable is None:
            self._connecting = self._connecting or asyncio.Lock()
            async with self._connecting:
                if self._board is None and self._unavailable is None:
                    assert self._address is not None
                    try:
                        self._board = await asyncio.to_thread(self._connect, self._address)
                    except Exception as e:  # noqa: BLE001 - any failure means: solve alone
                        self._unavailable = f"connecting to the GCS at {self._address} " \
                                            f"failed: {type(e).__name__}: {e}"
        return self._board

    async def obtain(self, *, key: str, store: Store, solve: Solve,
                     logger: logging.Logger) -> Solution:
        """The cluster's solution `key`: shared if some node published it, else this
        node's kept one (offered to the cluster), else solved here (once per cluster
        where sharing works). Raises only what `solve` raises."""
        with await store.solve_lock(key).acquire_async():
            board = await self._get_board()
            if board is not None:
                try:
                    return await self._shared(board, key, store, solve, logger)
                except SharingFailed as e:
                    reason = str(e)
            else:
                reason = self._unavailable or "unknown"
            return await self._alone(key, store, solve, logger, reason)

    async def _alone(self, key: str, store: Store, solve: Solve,
                     logger: logging.Logger, reason: str) -> Solution:
        logger.warning(
            "ray-pixi cannot share pixi solutions with the cluster's other nodes here (%s): "
            "this node uses its own solution %s, whose packages may differ from other "
            "nodes'. The job goes on.", reason, key)
        kept = await asyncio.to_thread(store.read_solution, key)
        if kept is not None:
            return Solution(key, kept, "kept")
        lock = await solve("solved-alone")
        await asyncio.to_thread(store.write_solution, key, lock)
        return Solution(key, lock, "solved-alone")

    async def _publish(self, board: Board, key: str, lock: str) -> bool:
        """Put the lock if no node has: compressing a lock of megabytes takes a fifth of a
        second, so that too runs off the agent's event loop."""
        return bool(await self._call(
            lambda: board.put_if_absent(lock_kv_key(key), encode_lock(lock))))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:  # noqa: BLE001 - whatever the GCS client raises
            raise SharingFailed(f"the GCS key-value store failed: {type(e).__name__}: "
                                f"{e}") from None

    async def _shared(self, board: Board, key: str, store: Store,
                      solve: Solve, logger: logging.Logger) -> Solution:
        watch = ClaimWatch(self._stale_after)
        waiting_since: float | None = None
        told = 0.0
        while True:
            value = await self._call(board.get, lock_kv_key(key))
            if value is not None:
                try:
                    lock = decode_lock(value)
                except ValueError as e:
                    raise SharingFailed(str(e)) from None
                await asyncio.to_thread(store.write_solution, key, lock)
                logger.info("Using the cluster's solution %s of this pixi environment", key)
                return Solution(key, lock, "shared")
            kept = await asyncio.to_thread(store.read_solution, key)
            if kept is not None:
                if await self._publish(board, key, kept):
                    logger.info("Offered this node's kept solution %s to the cluster", key)
                    return Solution(key, kept, "kept")
                continue  # another node published first: take theirs
            me = Claim(self._node, os.getpid())
            if await self._call(board.put_if_absent, claim_kv_key(key), me.encode()):
                # The claim may be free because its holder just published and released it,
                # after our look above: look again now that we hold it, or we solve twice.
                if await self._call(board.get, lock_kv_key(key)) is not None:
                    await self._call(board.delete, claim_kv_key(key))
                    continue
                lock, published = await self._solve_claimed(board, key, me, solve)
                if published:
                    await asyncio.to_thread(store.write_solution, key, lock)
                    logger.info("Published solution %s to the cluster", key)
                    return Solution(key, lock, "solved")
                continue  # a node that took over meanwhile published first: take theirs
            raw = await self._call(board.get, claim_kv_key(key))
            if raw is None:
                continue  # released meanwhile: its lock, or a claim of our own, next
            claim = Claim.decode(raw)
            if claim is None:  # unreadable (another format): stale, as solution.py says
                logger.warning("An unreadable claim on pixi environment %s; taking it over", key)
                await self._call(board.delete, claim_kv_key(key))
                await asyncio.sleep(self._poll)
                continue
            now = time.monotonic()
            if watch.stale(claim, now):
                logger.warning("Node %s stopped solving pixi environment %s (its claim did not "
                               "move for %.0f s); solving it here", claim.node, key,
                               self._stale_after)
                await self._call(board.delete, claim_kv_key(key))
                continue
            waiting_since = now if waiting_since is None else waiting_since
            if now - told >= 4.0:
                told = now
                logger.info("ray-pixi: waiting for node %s, which solves pixi environment %s "
                            "for the cluster (%.1f s)", claim.node, key, now - waiting_since)
            await asyncio.sleep(self._poll)

    async def _solve_claimed(self, board: Board, key: str, me: Claim,
                             solve: Solve) -> tuple[str, bool]:
        """Solve while bumping our claim, publish the lock (whether ours was first), then
        release the claim whatever happens: released before publishing, a waiter would see
        neither and solve again."""

        async def beat() -> None:
            claim = me
            while True:
                await asyncio.sleep(self._beat)
                claim = claim.bumped()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(board.put, claim_kv_key(key), claim.encode())

        beating = asyncio.ensure_future(beat())
        try:
            lock = await solve("solved")
            published = await self._publish(board, key, lock)
            return lock, bool(published)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            with contextlib.suppress(Exception):
                await asyncio.to_thread(board.delete, claim_kv_key(key))
