"""A Ray job with one task that needs a whole CPU, in the runtime_env it is given.

Submitted by tests/node with this directory as the working_dir:
`python cpu_task_job.py '{"module": "pyjokes", "runtime_env": {...}}'`. On a cluster whose
head advertises no CPU (`num-cpus: 0`), only a worker can run the task: with a worker group
at 0 replicas, the autoscaler has to add one first. Prints one line `RESULT <json>`: what the
task saw (probe_job.probe).
"""

from __future__ import annotations

import json
import sys

import ray
from probe_job import probe


@ray.remote(num_cpus=1)
def task(module: str | None) -> dict:
    return probe(module)


def main() -> None:
    request = json.loads(sys.argv[1])
    ray.init()
    options = {"runtime_env": request["runtime_env"]} if request.get("runtime_env") else {}
    seen = ray.get(task.options(**options).remote(request.get("module")))
    print("RESULT " + json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
