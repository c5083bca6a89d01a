"""Errors a ray-pixi user can read and act on: each says what was wrong, the value seen
and what to do next."""

from __future__ import annotations

__all__ = [
    "PixiInstallError",
    "PixiNotFoundError",
    "PixiSpecError",
    "PixiStoreError",
    "PixiUnavailableError",
    "PixiVersionMismatchError",
]


class PixiSpecError(ValueError):
    """A `runtime_env["pixi"]` value that cannot describe an environment.

    Raised by `pixi()` on the driver and by the plugin's `validate` in the agent, with the
    same text, so a job fails before any node installs anything.
    """


class PixiNotFoundError(RuntimeError):
    """No usable pixi binary on the node (missing, too old, or a bootstrap that failed)."""


class PixiInstallError(RuntimeError):
    """`pixi install` (or another pixi command) failed; carries the command, exit code,
    the tail of pixi's output and the path of the full log."""

    def __init__(self, message: str, *, log_path: str | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


class PixiVersionMismatchError(RuntimeError):
    """The installed environment's Python or Ray differs from the cluster's, so Ray would
    refuse its workers; the message carries the manifest line that fixes it."""


class PixiStoreError(RuntimeError):
    """The node's environment store cannot be used (missing, not a directory, read-only,
    another user's); the message names the path and what to change."""


class PixiUnavailableError(RuntimeError):
    """ray-pixi cannot load on this node (Python, Ray or pydantic outside the supported
    range); raised on every pixi request, while other jobs on the node run."""
