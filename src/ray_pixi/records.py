"""The store's ready record as typed data: what an install writes beside a complete
environment, and what every agent and `ray-pixi envs` read back. Pure.

The record outlives plugin versions (a store on a persistent volume, nodes upgraded one at a
time), so both directions stay compatible: `to_json` writes every field today's and earlier
readers look up, and `from_json` reads records earlier versions wrote. A field a record
lacks is None; whether such a record can start workers is the installer's call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray_pixi.activation import Activation

__all__ = ["ReadyRecord"]


def _optional(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"the ready record's {name!r} is {value!r}")
    return value


@dataclass(frozen=True)
class ReadyRecord:
    """One ready environment: how to start its workers and what `ray-pixi envs` shows."""

    key: str
    size_bytes: int = 0
    layout: int | None = None
    activation: Activation | None = None
    prefix: str | None = None
    python: str | None = None
    ray: str | None = None
    pixi_version: str | None = None
    mode: str | None = None
    environment: str | None = None
    manifest: str | None = None
    installed_at: float | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)
    log: str | None = None
    # The pixi.lock the environment was installed from (its sha256), and for a spec
    # without a lock the cluster's solution it came from (`ray_pixi.solution`) and how this
    # node got it: "solved", "shared" (another node's, from the cluster), "kept" (this
    # store's, from an earlier cluster) or "solved-alone" (no sharing possible here).
    lock_sha256: str | None = None
    solution: str | None = None
    solution_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field earlier readers look up; the lock fields only when set, so a record
        an earlier version wrote reads back byte for byte (earlier readers ignore them)."""
        lock = {name: value for name, value in (
            ("lock_sha256", self.lock_sha256), ("solution", self.solution),
            ("solution_source", self.solution_source)) if value is not None}
        return {
            "layout": self.layout,
            "activation": None if self.activation is None else self.activation.to_json(),
            "prefix": self.prefix,
            "size_bytes": self.size_bytes,
            "python": self.python,
            "ray": self.ray,
            "pixi_version": self.pixi_version,
            "mode": self.mode,
            "environment": self.environment,
            "manifest": self.manifest,
            "installed_at": self.installed_at,
            "seconds": dict(self.seconds),
            "log": self.log,
            **lock,
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: Any) -> ReadyRecord:
        """Read a record any plugin version wrote. Raises ValueError for one that is not
        a record (the store then treats its environment as not ready)."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            raise ValueError("the ready record is not an object with a 'key'")
        try:
            activation = data.get("activation")
            seconds = data.get("seconds")
            if seconds is None and data.get("install_seconds") is not None:
                seconds = {"total": data["install_seconds"]}  # layout 1 kept only the total
            return cls(
                key=data["key"],
                size_bytes=int(data.get("size_bytes") or 0),
                layout=_optional(data, "layout", int),
                activation=None if activation is None else Activation.from_json(activation),
                prefix=_optional(data, "prefix", str),
                python=_optional(data, "python", str),
                ray=_optional(data, "ray", str),
                pixi_version=_optional(data, "pixi_version", str),
                mode=_optional(data, "mode", str),
                environment=_optional(data, "environment", str),
                manifest=_optional(data, "manifest", str),
                installed_at=_optional(data, "installed_at", (int, float)),
                seconds={str(k): float(v) for k, v in (seconds or {}).items()},
                log=_optional(data, "log", str),
                lock_sha256=_optional(data, "lock_sha256", str),
                solution=_optional(data, "solution", str),
                solution_source=_optional(data, "solution_source", str),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"the ready record cannot be read: {e!r}") from None
