"""The one error of the mutation, shared by every module that prepares a Ray object."""

from __future__ import annotations

__all__ = ["InjectionError"]


class InjectionError(ValueError):
    """The object cannot be prepared; the message names the field, the value and the fix."""
