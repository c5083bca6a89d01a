"""One solution per cluster for a spec without a lock: what keys it, how it travels, and
how a node tells a live solver from a dead one. Pure; `ray_pixi.sharing` does the effects.

A spec without a lock (an inline spec, or a manifest or project with `locked=False`) is
solved once per cluster and every node installs that pixi.lock with `--frozen`, so nodes
that set up minutes or hours apart (after the channel published newer versions) install
the same packages. The solution key covers what decides the solve: the manifest (an
inline spec's includes the cluster's Python and Ray pins and the platforms), the
environment, the node's platform, the cluster's Python and Ray, the pixi release (a lock
a newer pixi writes may be unreadable to an older one) and the spec's `solve_tag` (a new
tag asks for a fresh solve). Nodes of two platforms get one solution each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass

from ray_pixi.cluster import ClusterInfo
from ray_pixi.key import digest, env_inputs
from ray_pixi.spec import PixiSpec

__all__ = [
    "KV_NAMESPACE",
    "SOLUTION_FORMAT",
    "Claim",
    "ClaimWatch",
    "Provenance",
    "Solution",
    "claim_kv_key",
    "decode_lock",
    "encode_lock",
    "lock_kv_key",
    "lock_sha256",
    "shares_solution",
    "solution_key",
]

#: Bumped when what a solution key covers, or how a lock is stored, changes.
SOLUTION_FORMAT = 1
#: The GCS key-value namespace ray-pixi writes; nothing else of Ray's reads it.
KV_NAMESPACE = b"ray_pixi"


def shares_solution(spec: PixiSpec) -> bool:
    """Whether nodes must agree on a solve: every spec that does not install a given lock."""
    return not spec.install_locked


def solution_key(spec: PixiSpec, cluster: ClusterInfo, pixi_version: str,
                 project_digest: str | None = None) -> str:
    """The key one cluster-wide solution of `spec` is stored under."""
    return digest({"format": SOLUTION_FORMAT, "tag": spec.solve_tag,
                   **env_inputs(spec, cluster, pixi_version, project_digest)})


def lock_sha256(lock: str) -> str:
    """The lock's identity, as the ready record and `ray-pixi envs list` name it."""
    return hashlib.sha256(lock.encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """Which cluster solution an environment is, and how this node got it: "solved" (here,
    for the cluster), "shared" (another node's), "kept" (this store's, from an earlier
    cluster) or "solved-alone" (no sharing possible here)."""

    key: str
    source: str


@dataclass(frozen=True)
class Solution:
    """The pixi.lock a spec without a lock installs on this node, under solution key
    `key`, and how this node got it (see `ReadyRecord.solution_source`)."""

    key: str
    lock: str
    source: str

    @property
    def sha256(self) -> str:
        return lock_sha256(self.lock)


def lock_kv_key(key: str) -> bytes:
    return f"lock/{key}".encode()


def claim_kv_key(key: str) -> bytes:
    return f"claim/{key}".encode()


def encode_lock(lock: str) -> bytes:
    """A lock as the KV holds it: compressed (locks run to hundreds of KB)."""
    return base64.b64encode(zlib.compress(lock.encode(), 9))


def decode_lock(value: bytes) -> str:
    """Raises ValueError for a value that is not an encoded lock."""
    try:
        return zlib.decompress(base64.b64decode(value, validate=True)).decode()
    except (ValueError, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"the shared lock cannot be read: {e}") from None


@dataclass(frozen=True)
class Claim:
    """A node solving for the cluster: who, and a beat it bumps while it lives."""

    node: str
    pid: int
    beat: int = 0

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "pid": self.pid, "beat": self.beat}).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Claim | None:
        """None for no claim or an unreadable one (which a waiter treats as stale)."""
        if value is None:
            return None
        try:
            data = json.loads(value)
            return cls(str(data["node"]), int(data["pid"]), int(data["beat"]))
        except (ValueError, KeyError, TypeError):
            return None

    def bumped(self) -> Claim:
        return Claim(self.node, self.pid, self.beat + 1)


class ClaimWatch:
    """A waiter's view of another node's claim. Clocks differ between nodes, so a claim is
    judged by whether its beat moved within `stale_after` seconds of the waiter's own
    monotonic clock, never by a timestamp the claimant wrote."""

    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._seen: Claim | None = None
        self._since = 0.0

    def stale(self, claim: Claim | None, now: float) -> bool:
        """Whether the claimant looks dead at `now` (monotonic seconds)."""
        if claim is None:
            return True
        if claim != self._seen:
            self._seen, self._since = claim, now
            return False
        return now - self._since > self._stale_after
