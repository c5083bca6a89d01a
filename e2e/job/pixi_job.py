"""The end-to-end scenario's job: a task and an actor on every alive node, in a pixi env.

Submitted through the head's Jobs API with this folder as its working_dir:

    ray job submit --working-dir <this folder> -- python pixi_job.py inline
    ray job submit --working-dir <this folder> -- python pixi_job.py project

`inline` declares the environment in the call (conda-forge `proj`, whose activate.d script
sets PROJ_DATA, and PyPI `pyjokes`); `project` uses pixi.toml of the working_dir (written by
e2e/run from pixi.toml.in with the cluster's exact Python) with the editable package in src/.
Prints one `E2E-REPORT <json>` line per task and actor; e2e/check.py judges them.
"""

from __future__ import annotations

import json
import os
import sys

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_pixi import pixi

INLINE = {"dependencies": {"proj": "*"}, "pypi_dependencies": {"pyjokes": "==0.8.3"}}


def report(kind: str) -> dict[str, object]:
    """What a worker in the environment sees."""
    import pyjokes

    seen: dict[str, object] = {
        "kind": kind,
        "node_ip": ray.util.get_node_ip_address(),
        "python": sys.executable,
        "sys_prefix": sys.prefix,
        "pyjokes": pyjokes.__file__,
        "PROJ_DATA": os.environ.get("PROJ_DATA"),
        "payload_on_sys_path": [p for p in sys.path if "/ray-pixi/payload" in p],
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


def main(mode: str) -> None:
    if mode == "inline":
        runtime_env = {"pixi": pixi(**INLINE)}
    elif mode == "project":
        runtime_env = {"pixi": pixi("pixi.toml", include=["pyproject.toml", "src/**"],
                                    locked=False)}  # fmt: skip
    else:
        raise SystemExit(f"pixi_job.py: mode must be inline or project, got {mode!r}")
    ray.init()
    refs = []
    for node in [n["NodeID"] for n in ray.nodes() if n["Alive"]]:
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        refs.append(task.options(runtime_env=runtime_env, scheduling_strategy=here).remote())
        probe = Probe.options(runtime_env=runtime_env, scheduling_strategy=here).remote()
        refs.append(probe.report.remote())
    for seen in ray.get(refs):
        print("E2E-REPORT", json.dumps(seen, sort_keys=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
