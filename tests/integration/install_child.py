"""Run one install_environment in its own process, as a second Ray agent sharing the store
would (its environment is the test's node environment). Usage: python install_child.py
STORE_DIR SPEC_JSON; prints the install result as JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from ray_pixi.cluster import ClusterInfo
from ray_pixi.install import install_environment
from ray_pixi.key import build_env_key
from ray_pixi.pixi_cli import find_pixi_on_node
from ray_pixi.spec import parse_spec
from ray_pixi.store import Store


async def main(store_dir: str, spec_json: str) -> None:
    spec = parse_spec(json.loads(spec_json))
    cluster = ClusterInfo.current()
    pixi = find_pixi_on_node()
    assert pixi is not None
    key = build_env_key(spec, cluster, pixi.version_str)
    store = Store(Path(store_dir))
    store.ensure()
    env, installed = await install_environment(
        key=key, spec=spec, cluster=cluster, store=store, pixi=pixi,
        logger=logging.getLogger("child"))
    print(json.dumps({"key": key, "installed": installed, "python": env.activation.python}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
