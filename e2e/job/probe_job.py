"""A Ray job that reports what its tasks and actors saw on each node (stdlib + Ray only).

Submitted by the end-to-end scenario (e2e/scenario.py) and the node tests through the head's
Jobs API, with this directory (or the project written from it) as the working_dir.
`python probe_job.py '<json>'` with
  {"module": "pyjokes",           # imported by the driver, each task and each actor
   "runtime_env": {...} | null,   # given to the tasks and actors (null: the job's own)
   "variable": "PROJ_DATA"}       # optional: an env var to report (an activate.d script's)
and, for every alive node ("head" or "worker"), a plain task (no runtime_env) too. Prints one
line `RESULT <json>`: the driver's view, and per node the plain task's, the task's and the
actor's, or the error their runtime_env's setup raised. A plain task inherits the job's
runtime_env, as every task does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

HEAD_RESOURCE = "node:__internal_head__"


def probe(module: str | None, variable: str | None = None) -> dict:
    found = importlib.util.find_spec("ray_pixi")
    seen = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "prefix": sys.prefix,
        "executable": sys.executable,
        "path": sys.path,
        "ray_pixi": found.origin if found else None,
        "activated": os.environ.get(variable) if variable else None,
        "module": None,
    }
    if module:
        seen["module"] = importlib.import_module(module).__file__
    return seen


@ray.remote(num_cpus=0)
def task(module: str | None, variable: str | None = None) -> dict:
    return probe(module, variable)


@ray.remote(num_cpus=0)
class Probe:
    def seen(self, module: str | None, variable: str | None = None) -> dict:
        return probe(module, variable)


def attempt(make, options: dict, module: str | None, variable: str | None) -> dict:
    """What a task or an actor saw, or the error it raised (a runtime_env that cannot be set
    up fails a task with RuntimeEnvSetupError, an actor with the error of its creation)."""
    try:
        if make is task:
            return ray.get(task.options(**options).remote(module, variable))
        actor = Probe.options(**options).remote()  # held: the call needs a live handle
        return ray.get(actor.seen.remote(module, variable))
    except RayError as error:
        return {"error": str(error), "error_type": type(error).__name__}


def main() -> None:
    request = json.loads(sys.argv[1])
    module, runtime_env = request.get("module"), request.get("runtime_env")
    variable = request.get("variable")
    ray.init()
    out = {"driver": probe(module if runtime_env is None else None, variable), "nodes": {}}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        role = "head" if HEAD_RESOURCE in node["Resources"] else "worker"
        on = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
        with_env = dict(on, runtime_env=runtime_env) if runtime_env is not None else on
        out["nodes"][role] = {
            "node_id": node["NodeID"],
            "plain": ray.get(task.options(**on).remote(None, variable)),
            "task": attempt(task, with_env, module, variable),
            "actor": attempt(Probe, with_env, module, variable),
        }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
