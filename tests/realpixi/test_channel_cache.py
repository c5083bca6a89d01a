"""The test channel is built once per machine: equal inputs reuse it, a changed input
rebuilds exactly what it changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from realpixi.channel import Channel, build_channel, default_recipes
from realpixi.recipes import SIX, ActivationRecipe, WheelRecipe
from realpixi.world import CHANNEL_CACHE, WHEEL_CACHE
from support import persistent_cache

pytestmark = pytest.mark.integration


def stamps(channel: Channel) -> dict[str, int]:
    return {str(p.relative_to(channel.path)): p.stat().st_mtime_ns
            for p in channel.path.rglob("*") if p.is_file()}


def test_session_channel_is_not_rebuilt_by_a_second_build(conda_channel: Channel) -> None:
    """The same inputs as the session's channel: nothing is built or indexed again."""
    before = stamps(conda_channel)
    again = build_channel(default_recipes(persistent_cache(WHEEL_CACHE)),
                          persistent_cache(CHANNEL_CACHE))
    assert (again.path, again.packages) == (conda_channel.path, conda_channel.packages)
    assert (again.built, again.indexed) == ((), False)
    assert stamps(again) == before


def test_changed_input_rebuilds_only_its_package(tmp_path: Path) -> None:
    wheels = persistent_cache(WHEEL_CACHE)
    first = build_channel([ActivationRecipe("1.0.0"), WheelRecipe(SIX, wheels)], tmp_path)
    assert len(first.built) == 2 and first.indexed
    before = stamps(first)

    warm = build_channel([ActivationRecipe("1.0.0"), WheelRecipe(SIX, wheels)], tmp_path)
    assert (warm.path, warm.built, warm.indexed) == (first.path, (), False)
    assert stamps(warm) == before

    changed = build_channel([ActivationRecipe("1.0.1"), WheelRecipe(SIX, wheels)], tmp_path)
    assert changed.path != first.path and changed.indexed
    assert changed.built == (changed.package("ray-pixi-test-activation").filename,)
    assert changed.version("ray-pixi-test-activation") == "1.0.1"
    six = changed.package("six")
    # The unchanged package is the cached file itself, linked into the new channel.
    assert (changed.path / "noarch" / six.filename).samefile(first.path / "noarch" / six.filename)
