"""One setup through the plugin in its own process, as the runtime_env agent of another
Ray node or of an earlier session would run it, then exit (releasing what it held).
Usage: python agent_child.py RUNTIME_ENV_JSON; prints the worker's py_executable."""

from __future__ import annotations

import asyncio
import json
import sys

from ray._private.runtime_env.context import RuntimeEnvContext

from ray_pixi.plugin import PixiPlugin


def main(runtime_env_json: str) -> None:
    runtime_env = json.loads(runtime_env_json)
    plugin = PixiPlugin()
    plugin.validate(runtime_env)
    uris = plugin.get_uris(runtime_env)
    context = RuntimeEnvContext()
    asyncio.run(plugin.create(uris[0], runtime_env, context))
    plugin.modify_context(uris, runtime_env, context)
    print(context.py_executable)


if __name__ == "__main__":
    main(sys.argv[1])
