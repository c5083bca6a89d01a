"""What every command shares: the error a user fixes, which `ray_pixi.cli.main` prints as one
line and exit code 2."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A mistake or a state the user fixes: printed as one line with its remedy."""

