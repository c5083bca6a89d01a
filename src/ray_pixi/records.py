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

    def to_json(self) -> dict[str, Any]:
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
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"the ready record cannot be read: {e!r}") from None
