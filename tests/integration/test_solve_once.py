"""One solve per cluster (issue 21, item 1), with real pixi offline on a local Ray cluster
whose nodes each have a store of their own: a spec without a lock is solved once, whether
it arrives through `ray job submit --runtime-env-json` or `ray.init`; every node installs
that solution and reports the same packages from inside its workers; a node added after the
channel published a newer version installs the version the others have, without solving;
a new `solve_tag` asks for a fresh solve, which picks the newer version.

Solves are counted from the stores: the install that solves for the cluster says so in its
log (`[ray-pixi: solving <solution> for the cluster ...]`); every other one installs the
cluster's pixi.lock `--frozen`, and each ready record says how the node got its lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_pixi.install import SOLVING_NOTE
from realpixi.channel import build_channel
from realpixi.recipes import ActivationRecipe
from support import install_logs, installs, persistent_cache

pytestmark = pytest.mark.integration

RAY = Path(sys.executable).parent / "ray"
MOVING = "ray-pixi-test-moving"


def publish(channel_dir: Path, versions: list[str]) -> None:
    """`channel_dir` as a channel holding MOVING at `versions` (replaced in place, as a
    channel publishing a release)."""
    built = build_channel([ActivationRecipe(v, name=MOVING) for v in versions],
                          persistent_cache("solve-once-channels"))
    shutil.copytree(built.path, channel_dir, dirs_exist_ok=True)


def solves(stores: list[Path]) -> list[Path]:
    return [log for s in stores for log in install_logs(s) if SOLVING_NOTE in log.read_text()]


def sources(store: Path) -> list[str | None]:
    """How each ready environment in `store` got its lock."""
    return [json.loads(p.read_text()).get("solution_source")
            for p in sorted((store / "envs").glob("*.json"))]


@ray.remote(num_cpus=0)
def report() -> dict[str, Any]:
    """What this worker's environment holds, as seen from inside it."""
    import os
    from importlib.metadata import distributions

    prefix = Path(sys.prefix)
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "prefix": sys.prefix,
        "conda": sorted(p.name[:-len(".json")] for p in (prefix / "conda-meta").glob("*.json")),
        "pypi": sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()),
        "moving": os.environ.get("RAY_PIXI_TEST_ACTIVATED"),
    }


def on_every_node() -> list[dict[str, Any]]:
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    return ray.get([report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote() for node in nodes])


def test_a_cluster_solves_once_and_every_node_installs_that_solution(
    tmp_path: Path, own_cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel = tmp_path / "moving-channel"
    publish(channel, ["1.0.0", "1.1.0"])
    spec = {"channels": ["conda-forge", channel.as_uri()], "dependencies": {MOVING: "*"}}
    stores = [tmp_path / f"store{i}" for i in range(4)]
    with own_cluster(cpus=1, store=stores[0]) as c:
        for store in stores[1:3]:
            monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(store))
            c.cluster.add_node(num_cpus=1, temp_dir=str(c.temp_dir))
        c.cluster.wait_for_nodes()
        c.jobs()  # the Jobs API accepts jobs

        # Through `ray job submit`: no pixi() runs on the submitting side.
        submitted = subprocess.run(
            [str(RAY), "job", "submit", "--address", c.dashboard, "--runtime-env-json",
             json.dumps({"pixi": spec}), "--", "python", "-c",
             "import os; print('MOVING', os.environ.get('RAY_PIXI_TEST_ACTIVATED'))"],
            capture_output=True, text=True, timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert f"MOVING {MOVING} 1.1.0" in submitted.stdout
        assert len(solves(stores)) == 1

        # Through ray.init, the same spec, on all three nodes.
        with c.job(runtime_env={"pixi": spec}):
            seen = on_every_node()
        assert len({s["node"] for s in seen}) == 3
        assert len({s["prefix"] for s in seen}) == 3  # one install per store
        assert {s["moving"] for s in seen} == {f"{MOVING} 1.1.0"}
        assert all(s["conda"] == seen[0]["conda"] and s["pypi"] == seen[0]["pypi"]
                   for s in seen)
        assert len(solves(stores)) == 1, solves(stores)
        for store in stores[:3]:
            assert installs(store) == 1
        assert sources(stores[0]) == ["solved"]  # the job's driver set up on the head first
        for store in stores[1:3]:
            assert sources(store) == ["shared"]
            assert all("--frozen" in log.read_text() for log in install_logs(store))

        # The channel publishes 1.2.0; a node added now installs the cluster's 1.1.0.
        publish(channel, ["1.0.0", "1.1.0", "1.2.0"])
        monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(stores[3]))
        c.cluster.add_node(num_cpus=1, temp_dir=str(c.temp_dir))
        c.cluster.wait_for_nodes()
        with c.job(runtime_env={"pixi": spec}):
            late = on_every_node()
        assert len(late) == 4
        assert {s["moving"] for s in late} == {f"{MOVING} 1.1.0"}
        assert all(s["conda"] == seen[0]["conda"] and s["pypi"] == seen[0]["pypi"]
                   for s in late)
        assert len(solves(stores)) == 1 and not solves(stores[3:])
        assert installs(stores[3]) == 1 and sources(stores[3]) == ["shared"]

        # A new solve_tag is a fresh solve: it sees the channel's 1.2.0.
        with c.job(runtime_env={"pixi": {**spec, "solve_tag": "fresh"}}):
            fresh = on_every_node()
        assert {s["moving"] for s in fresh} == {f"{MOVING} 1.2.0"}
        assert len(solves(stores)) == 2
