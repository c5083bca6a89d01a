"""The end-to-end scenario's job: a task and an actor on every alive node, in a pixi env.

Submitted through the head's Jobs API with this folder as its working_dir:

    ray job submit --working-dir <this folder> -- python pixi_job.py inline
    ray job submit --working-dir <this folder> -- python pixi_job.py project
    ray job submit --working-dir <this folder> -- python pixi_job.py failure

`inline` declares the environment in the call (conda-forge `proj`, whose activate.d script
sets PROJ_DATA, and PyPI `pyjokes`); `project` uses pixi.toml of the working_dir (written by
e2e/run from pixi.toml.in with the cluster's exact Python) with the editable package in src/.
Both print one `E2E-REPORT <json>` line per task and actor; e2e/check.py judges them.
`failure` (for a node where ray-pixi cannot work) runs a plain task and prints
`E2E-PLAIN <python>`, then `E2E-PIXI-ERROR <json message>` for a pixi task and a pixi actor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

INLINE = {"dependencies": {"proj": "*"}, "pypi_dependencies": {"pyjokes": "==0.8.3"}}


def report(kind: str) -> dict[str, object]:
    """What a worker in the environment sees."""
    import pyjokes

    found = importlib.util.find_spec("ray_pixi")
    seen: dict[str, object] = {
        "kind": kind,
        "node_ip": ray.util.get_node_ip_address(),
        "python": sys.executable,
        "sys_prefix": sys.prefix,
        "sys_path": sys.path,
        "pyjokes": pyjokes.__file__,
        "PROJ_DATA": os.environ.get("PROJ_DATA"),
        "ray_pixi": found.origin if found else None,
    }
    try:
        import e2e_pkg
    except ImportError:
        seen["e2e_pkg"] = None
    else:
        seen["e2e_pkg"] = e2e_pkg.__file__
    return seen


@ray.remote(num_cpus=0.25)
def task() -> dict[str, object]:
    return report("task")


@ray.remote(num_cpus=0.25)
class Probe:
    def report(self) -> dict[str, object]:
        return report("actor")


@ray.remote(num_cpus=0)
def plain() -> str:
    return sys.executable


def _alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def environments(runtime_env: dict) -> None:
    refs = []
    for node in _alive_nodes():
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        refs.append(task.options(runtime_env=runtime_env, scheduling_strategy=here).remote())
        probe = Probe.options(runtime_env=runtime_env, scheduling_strategy=here).remote()
        refs.append(probe.report.remote())
    for seen in ray.get(refs):
        print("E2E-REPORT", json.dumps(seen, sort_keys=True), flush=True)


def failure() -> None:
    """A raw spec (no ray_pixi import on the driver: the node may not be able to load it)."""
    runtime_env = {"pixi": INLINE}
    print("E2E-PLAIN", ray.get(plain.remote()), flush=True)
    try:
        ray.get(task.options(runtime_env=runtime_env).remote())
    except RayError as error:
        print("E2E-PIXI-ERROR", json.dumps(str(error)), flush=True)
    probe = Probe.options(runtime_env=runtime_env).remote()  # held: the call needs the handle
    try:
        ray.get(probe.report.remote())
    except RayError as error:
        print("E2E-PIXI-ERROR", json.dumps(str(error)), flush=True)


def main(mode: str) -> None:
    if mode not in ("inline", "project", "failure"):
        raise SystemExit(f"pixi_job.py: mode must be inline, project or failure, got {mode!r}")
    ray.init()
    if mode == "failure":
        failure()
        return
    from ray_pixi import pixi

    if mode == "inline":
        environments({"pixi": pixi(**INLINE)})
    else:
        environments({"pixi": pixi("pixi.toml", include=["pyproject.toml", "src/**"],
                                   locked=False)})  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
