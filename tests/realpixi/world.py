"""The whole offline world outside pytest (the demo, the bench, `python -m realpixi`):
pixi, the channel, the mirror, the PyPI proxy and a session config, opened together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import persistent_cache

from .channel import Channel, build_channel, default_recipes
from .config import PixiConfig, build_node_env, write_pixi_config
from .find import TestPixi, find_pixi
from .servers import ConnectRecorder, Mirror

__all__ = ["OfflineWorld", "open_world"]

CHANNEL_CACHE = "conda-channel"
PIXI_CACHE = "realpixi-pixi-cache"
WHEEL_CACHE = "wheels"


@dataclass(frozen=True)
class OfflineWorld:
    pixi: TestPixi
    channel: Channel
    mirror: Mirror
    proxy: ConnectRecorder
    config: PixiConfig
    #: what `pixi_node_env` gives: the env vars to run `pixi` offline
    env: dict[str, str]


def session_channel(cache: Path | None = None) -> Channel:
    """The standard test channel, from the per-machine cache unless `cache` is given."""
    return build_channel(default_recipes(persistent_cache(WHEEL_CACHE)),
                         cache or persistent_cache(CHANNEL_CACHE))


@contextmanager
def open_world(root: Path, *, pixi_cache: Path | None = None,
               channel_cache: Path | None = None) -> Iterator[OfflineWorld]:
    """Everything pixi needs to run offline, with its config under `root`; servers stop
    on exit. `pixi_cache` defaults to the per-machine pixi cache."""
    pixi = find_pixi()
    channel = session_channel(channel_cache)
    with Mirror(channel) as mirror, ConnectRecorder() as proxy:
        config = write_pixi_config(root, mirror.channel_url, mirror.mapping_url,
                                   pixi_cache or persistent_cache(PIXI_CACHE))
        yield OfflineWorld(pixi, channel, mirror, proxy, config,
                           build_node_env(pixi.path, config, proxy.url))
