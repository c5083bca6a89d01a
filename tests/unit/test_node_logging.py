"""Where the plugin's eviction lines go: Ray hands delete_uri its uri_cache module's logger,
which no handler in the agent writes; the lines must reach runtime_env_agent.log."""

from __future__ import annotations

import logging

from ray._private.runtime_env import uri_cache

from ray_pixi.node import _written


def test_eviction_lines_go_to_the_agents_logger_when_it_writes_somewhere() -> None:
    agent = logging.getLogger("runtime_env_agent")  # what Ray's agent/main.py names it
    handler = logging.NullHandler()
    agent.addHandler(handler)
    try:
        assert _written(uri_cache.default_logger) is agent
    finally:
        agent.removeHandler(handler)


def test_a_logger_ray_configured_is_used_as_given() -> None:
    setup = logging.Logger("runtime_env_01000000")  # a job's setup logger
    assert _written(setup) is setup
