"""Which store entry a node uses for the cluster's solution: the spec's own key, unless the
environment there was built from another lock (a store from an earlier cluster); then a key
of its own, so a node never runs another solution than the cluster's."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ray_pixi.activation import Activation
from ray_pixi.key import STORE_LAYOUT, build_env_key
from ray_pixi.node import PixiNode
from ray_pixi.pixi_cli import PixiExe
from ray_pixi.records import ReadyRecord
from ray_pixi.solution import Solution, lock_sha256
from ray_pixi.spec import parse_spec

SPEC = parse_spec({"dependencies": {"six": "*"}})
PIXI = PixiExe("/bin/pixi", (0, 77, 0))
CLUSTERS = Solution("s" * 32, "version: 6\n# the cluster's\n", "shared")


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PixiNode:
    monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(tmp_path / "store"))
    n = PixiNode()
    for thread in threading.enumerate():  # its sweep would take our half-written entries
        if thread.name == "ray-pixi-sweep":
            thread.join()
    n._store.ensure()
    return n


def ready(node: PixiNode, key: str, lock: str, record_sha: bool = True) -> None:
    (node._store.workspace(key) / ".pixi").mkdir(parents=True)
    (node._store.workspace(key) / "pixi.lock").write_text(lock)
    node._store.write_ready(ReadyRecord(
        key, layout=STORE_LAYOUT, activation=Activation("p"), python="3.11.7", mode="inline",
        lock_sha256=lock_sha256(lock) if record_sha else None))


def test_the_specs_key_when_nothing_or_the_same_solution_is_there(node: PixiNode) -> None:
    key = build_env_key(SPEC, node._cluster, "0.77.0")
    assert node._installed_from(key, CLUSTERS, SPEC, PIXI, None) == key
    ready(node, key, CLUSTERS.lock)
    assert node._installed_from(key, CLUSTERS, SPEC, PIXI, None) == key


def test_a_record_without_the_lock_sha_is_judged_by_its_pixi_lock(node: PixiNode) -> None:
    key = build_env_key(SPEC, node._cluster, "0.77.0")
    ready(node, key, CLUSTERS.lock, record_sha=False)
    assert node._installed_from(key, CLUSTERS, SPEC, PIXI, None) == key


def test_an_environment_of_another_solution_is_left_alone(node: PixiNode) -> None:
    key = build_env_key(SPEC, node._cluster, "0.77.0")
    ready(node, key, "version: 6\n# an earlier cluster's\n")
    other = node._installed_from(key, CLUSTERS, SPEC, PIXI, None)
    assert other == build_env_key(SPEC, node._cluster, "0.77.0", lock_sha=CLUSTERS.sha256)
    assert other != key
