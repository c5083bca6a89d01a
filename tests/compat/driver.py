"""The driver the compat tier runs with a Ray release's own Python (its venv, ray-pixi
installed beside it): one Ray job making one pixi request, its outcome printed as a JSON
`RESULT` line. Python 3.10-safe: it runs on every release's venv.

    python driver.py '{"address": ..., "pixi": {...} | "pixi_args": {...}, "module": ...}'

`pixi_args` are `ray_pixi.pixi()`'s arguments (called here, on this release's driver);
`pixi` is a raw `runtime_env["pixi"]` value.
"""

import json
import sys

import ray
from ray.exceptions import RuntimeEnvSetupError

from ray_pixi import pixi


@ray.remote(max_calls=1)
def probe(module: str) -> dict:
    """What a fresh worker runs in and imports."""
    import importlib
    import sys

    import ray as worker_ray

    imported = importlib.import_module(module)
    return {"prefix": sys.prefix, "executable": sys.executable, "file": imported.__file__,
            "ray": worker_ray.__version__}


def main() -> None:
    request = json.loads(sys.argv[1])
    spec = pixi(**request["pixi_args"]) if "pixi_args" in request else request["pixi"]
    ray.init(address=request["address"], runtime_env={"pixi": spec})
    try:
        out = {"seen": ray.get(probe.remote(request.get("module", "six")), timeout=900)}
    except RuntimeEnvSetupError as e:
        out = {"error": str(e)}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
