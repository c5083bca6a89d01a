"""An install the user can watch: a slow install's setup log says, at each phase and
regularly between, which node and environment, the phase, and the time so far; and
`ray-pixi envs list` shows it under way. The site's mirror stalling the solve is what makes
real pixi slow."""

from __future__ import annotations

import re
import threading
import time

import pytest
import ray

from ray_pixi import cli, pixi, progress

pytestmark = pytest.mark.integration

STALL_SECONDS = 12.0
LINE = re.compile(r"ray-pixi: node (?P<node>\S+) env (?P<key>\w+): (?P<phase>.+) "
                  r"\((?P<elapsed>\d+\.\d) s\)$")


@ray.remote(max_calls=1)
def where() -> str:
    import sys

    return sys.executable


def _progress_lines(cluster) -> list[re.Match[str]]:  # type: ignore[no-untyped-def]
    lines = [ln for p in sorted(cluster.logs.glob("runtime_env_setup-*.log"))
             for ln in p.read_text(errors="replace").splitlines()]
    return [m for ln in lines if (m := LINE.search(ln))]


def test_a_slow_install_shows_its_phases_in_order_with_node_key_and_time(
        shared_cluster, pixi_mirror, capsys) -> None:
    c = shared_cluster
    spec = pixi(dependencies={"six": "*"})
    listed: list[str] = []
    with pixi_mirror.stall("/conda-forge/*/repodata*") as stall, c.job():
        ref = where.options(runtime_env={"pixi": spec}).remote()
        assert stall.wait_hit(timeout=120), "pixi never asked the mirror for repodata"
        time.sleep(STALL_SECONDS / 2)
        assert cli.main(["envs", "list", "--store", str(c.store)]) == 0
        listed.append(capsys.readouterr().out)
        threading.Timer(STALL_SECONDS / 2, stall.release).start()
        python = ray.get(ref, timeout=600)
    key = python.split("/envs/")[1].split("/")[0]
    node = c.cluster.head_node.node_ip_address
    ours = [m for m in _progress_lines(c) if m["key"] == key]
    said = "\n".join(m[0] for m in ours)  # what the user read, for a failure's message
    assert ours, "no progress line in the setup log"
    assert {m["node"] for m in ours} == {node}, said
    elapsed = [float(m["elapsed"]) for m in ours]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= STALL_SECONDS - 1, said
    phases = [m["phase"] for m in ours]
    ranks = [progress.phase_rank(p) for p in phases]
    assert ranks == sorted(ranks), said
    for phase in (progress.STARTING, progress.SOLVING, progress.INSTALLING,
                  progress.INSTALLING_PYPI, progress.COMPILING, progress.CHECKING):
        assert progress.phase_rank(phase) in ranks, said
    assert phases.count(progress.SOLVING) >= 3, said  # the stall, told every few seconds
    line = next(ln for ln in listed[0].splitlines() if ln.startswith(key))
    assert re.search(rf"installing on node {re.escape(node)}: solving \(\d+ s so far\)",
                     line), listed[0]
