"""A malformed node setting on a live Ray cluster: every pixi job fails with the variable, its
value and the fix, and the node stays up for every other job."""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import RuntimeEnvSetupError

from ray_pixi import pixi

pytestmark = pytest.mark.integration


@ray.remote(max_calls=1)
def where() -> str:
    return ray.get_runtime_context().get_node_id()


def test_a_malformed_disk_budget_fails_pixi_jobs_and_plain_tasks_still_run(own_cluster) -> None:
    with own_cluster(RAY_PIXI_DISK_BUDGET_GB="not-a-number") as c, c.job():
        spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
        with pytest.raises(RuntimeEnvSetupError) as e:
            ray.get(where.options(runtime_env={"pixi": spec}).remote())
        assert "Invalid RAY_PIXI_DISK_BUDGET_GB='not-a-number': must be a number of GiB " \
               "greater than 0, such as 10 or 2.5. Set it to the GiB" in str(e.value)
        node = ray.get(where.remote())
        assert [n["NodeID"] for n in ray.nodes() if n["Alive"]] == [node]
    assert c.installs == 0
