"""`ray-pixi` against live local Ray clusters and real installs with real pixi: prefetch on
every node, envs while Ray runs, and doctor reading a running agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_pixi import doctor, pixi, settings

pytestmark = pytest.mark.integration
JOKES = {"pyjokes": "==0.8.3"}


def ray_pixi(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The console command, run as an operator would, with this process's variables."""
    return subprocess.run([sys.executable, "-m", "ray_pixi.cli", *argv], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


@ray.remote(max_calls=1)
def prefix() -> tuple[str, str]:
    import sys

    import ray as worker_ray

    return worker_ray.get_runtime_context().get_node_id(), sys.prefix


def test_prefetch_installs_on_every_node_so_the_job_starts_cached(own_cluster) -> None:
    with own_cluster(nodes=2, cpus=1) as c:
        done = ray_pixi("prefetch", "--address", c.cluster.address, "--pypi", "pyjokes==0.8.3")
        assert done.returncode == 0, done.stderr
        with c.job():
            nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        out = done.stdout
        assert "Installing on 2 alive node(s)" in out and "2/2 node(s) ready" in out
        for node in nodes:
            line = next(ln for ln in out.splitlines() if ln.startswith(node[:12]))
            assert " ready " in line and str(c.store / "envs") in line
        assert c.installs == 1  # both nodes share this host's store
        with c.job(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}):
            seen = ray.get([prefix.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n, soft=False)).remote() for n in nodes])
        assert sorted(s[0] for s in seen) == nodes
        assert c.installs == 1  # the job found it installed on both nodes

        failed = ray_pixi("prefetch", "--address", c.cluster.address, "--conda", "numpy>=2",
                          "--timeout", "120")
        assert failed.returncode == 1
        rows = [ln for ln in failed.stdout.splitlines() if ln[:12] in {n[:12] for n in nodes}]
        assert len(rows) == 2 and all(" FAILED " in r for r in rows)
        assert all("No candidates were found for numpy" in r and "Full log: " in r
                   for r in rows), rows
        assert "0/2 node(s) ready" in failed.stdout


def test_prefetch_without_a_cluster_says_how_to_start_one() -> None:
    done = ray_pixi("prefetch", "--address", "127.0.0.1:1", "--pypi", "six")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("ray-pixi: cannot connect to Ray at '127.0.0.1:1'")
    assert "`ray start --head`" in done.stderr and done.stderr.count("\n") == 1


def agent_of(c) -> int:
    """The pid of the head node's runtime_env agent."""
    session = os.path.realpath(c.cluster.head_node.get_session_dir_path())
    raylets = [a for a in doctor.find_agents()
               if a.session_dir and os.path.realpath(a.session_dir) == session]
    assert len(raylets) == 1, raylets
    agents = [p for p in Path("/proc").glob("[0-9]*")
              if (p / "stat").exists() and doctor._ppid(int(p.name)) == raylets[0].pid
              and doctor._is_agent(doctor._args(int(p.name)))]
    assert len(agents) == 1, agents
    return int(agents[0].name)


def test_envs_and_doctor_on_a_running_node(own_cluster) -> None:
    """An env a running Ray node has used is listed as in use by that node's agent, and
    neither rm nor gc removes it until the node stops; doctor reads the agent's variables."""
    with own_cluster() as c:
        with c.job(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}):
            _, env_prefix = ray.get(prefix.remote())
        key = Path(env_prefix).parents[2].name
        agent = agent_of(c)
        # Installed with Ray's bytecode, so workers need not compile Ray on every start.
        assert list(Path(env_prefix).glob(
            "lib/python3*/site-packages/ray/_private/workers/__pycache__/default_worker.*.pyc"))

        checked = ray_pixi("doctor", "--agent-pid", str(agent),
                           RAY_RUNTIME_ENV_PLUGINS="", RAY_PIXI_STORE_DIR="/nonexistent")
        assert checked.returncode == 0, checked.stdout
        assert "the runtime_env agent of the running Ray node (raylet pid " in checked.stdout
        assert "ok    plugin registered" in checked.stdout
        assert f"ok    store dir: {c.store} is writable" in checked.stdout, checked.stdout
        assert "ok    pixi: " in checked.stdout and "is pixi 0.77.0" in checked.stdout

        rows = json.loads(ray_pixi("envs", "list", "--json", "--store", str(c.store)).stdout)
        (row,) = [r for r in rows if r["key"] == key]
        assert row["in_use"] and row["size_bytes"] > 100_000
        session = Path(c.cluster.head_node.get_session_dir_path()).name
        assert row["used_by"] == [f"pid {agent}, Ray {session}"], row
        listed = ray_pixi("envs", "list", "--store", str(c.store)).stdout
        assert f"yes: pid {agent}, Ray {session}" in listed

        refused = ray_pixi("envs", "rm", key[:8], "--store", str(c.store))
        assert refused.returncode == 1 and f"in use by pid {agent}" in refused.stderr
        collected = ray_pixi("envs", "gc", "--store", str(c.store))
        assert collected.returncode == 0 and f"kept {key}: in use" in collected.stdout
        assert key in c.envs()
        with c.job(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}):
            assert ray.get(prefix.remote())[1] == env_prefix  # still usable, still there
        assert c.installs == 1  # the second job reused the install (gc removes its logs too)

    rows = json.loads(ray_pixi("envs", "list", "--json", "--store", str(c.store)).stdout)
    assert [r["in_use"] for r in rows if r["key"] == key] == [False]
    collected = ray_pixi("envs", "gc", "--store", str(c.store))
    assert collected.returncode == 0 and f"removed {key}" in collected.stdout
    assert c.envs() == []


def test_doctor_flags_an_agent_started_without_the_plugin(own_cluster) -> None:
    with own_cluster(RAY_RUNTIME_ENV_PLUGINS="[]") as c:
        agent = agent_of(c)
        checked = ray_pixi("doctor", "--agent-pid", str(agent),
                           RAY_RUNTIME_ENV_PLUGINS=settings.REGISTER_LINE)  # not this shell's
    assert checked.returncode == 1, checked.stdout
    assert "Checking the runtime_env agent of the running Ray node (raylet pid" in checked.stdout
    assert "FAIL  plugin registered: RAY_RUNTIME_ENV_PLUGINS for the agent lists [], not " \
           "ray_pixi.PixiPlugin" in checked.stdout, checked.stdout
    assert "fix: add {\"class\": \"ray_pixi.PixiPlugin\"} to it" in checked.stdout
