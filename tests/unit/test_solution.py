"""What keys a cluster's solution, how a lock travels through the key-value store, and how
a waiter tells a live solver from a dead one. Pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ray_pixi.cluster import ClusterInfo
from ray_pixi.errors import PixiSpecError
from ray_pixi.key import build_env_key
from ray_pixi.solution import (
    Claim,
    ClaimWatch,
    decode_lock,
    encode_lock,
    shares_solution,
    solution_key,
)
from ray_pixi.spec import parse_spec

CLUSTER = ClusterInfo("3.11.7", "2.60.0", "linux-64")
INLINE = parse_spec({"dependencies": {"numpy": ">=2"}})
MANIFEST = {"manifest": "pixi.toml", "manifest_content": "[workspace]\n"}


def test_specs_without_a_lock_share_a_solution_and_locked_ones_do_not() -> None:
    assert shares_solution(INLINE)
    assert shares_solution(parse_spec({**MANIFEST, "locked": False}))
    assert shares_solution(parse_spec({"manifest": "pixi.toml", "locked": False}))
    assert not shares_solution(parse_spec({**MANIFEST, "lock_content": "version: 6\n"}))
    assert not shares_solution(parse_spec({"manifest": "pixi.toml"}))


BASE = solution_key(INLINE, CLUSTER, "0.77.0")


@pytest.mark.parametrize("other", [
    lambda: solution_key(parse_spec({"dependencies": {"numpy": ">=2.1"}}), CLUSTER, "0.77.0"),
    lambda: solution_key(INLINE, replace(CLUSTER, platform="linux-aarch64"), "0.77.0"),
    lambda: solution_key(INLINE, replace(CLUSTER, python_version="3.11.8"), "0.77.0"),
    lambda: solution_key(INLINE, replace(CLUSTER, ray_version="2.55.0"), "0.77.0"),
    lambda: solution_key(INLINE, CLUSTER, "0.76.0"),
    lambda: solution_key(parse_spec({"dependencies": {"numpy": ">=2"}, "solve_tag": "b"}),
                         CLUSTER, "0.77.0"),
    lambda: solution_key(parse_spec({"dependencies": {"numpy": ">=2"},
                                     "environment": "gpu"}), CLUSTER, "0.77.0"),
])
def test_what_decides_a_solve_changes_its_key(other) -> None:  # type: ignore[no-untyped-def]
    assert other() != BASE


def test_how_a_node_installs_does_not_change_the_solution() -> None:
    fetching = parse_spec({"dependencies": {"numpy": ">=2"},
                           "pixi_install_options": ["--concurrent-downloads", "4"]})
    assert solution_key(fetching, CLUSTER, "0.77.0") == BASE
    assert solution_key(INLINE, replace(CLUSTER, match_level="minor"), "0.77.0") == BASE


def test_a_project_solution_needs_its_files_digest() -> None:
    spec = parse_spec({"manifest": "pixi.toml", "locked": False})
    with pytest.raises(ValueError):
        solution_key(spec, CLUSTER, "0.77.0")
    assert solution_key(spec, CLUSTER, "0.77.0", "d1") != solution_key(spec, CLUSTER,
                                                                        "0.77.0", "d2")


def test_two_solutions_are_two_environments() -> None:
    one = build_env_key(INLINE, CLUSTER, "0.77.0", lock_sha="a" * 64)
    assert one != build_env_key(INLINE, CLUSTER, "0.77.0", lock_sha="b" * 64)
    assert one != build_env_key(INLINE, CLUSTER, "0.77.0")
    tagged = parse_spec({"dependencies": {"numpy": ">=2"}, "solve_tag": "b"})
    assert build_env_key(tagged, CLUSTER, "0.77.0") != build_env_key(INLINE, CLUSTER, "0.77.0")


def test_a_lock_travels_compressed_and_comes_back_whole() -> None:
    lock = "version: 6\n" + "packages:\n" * 5000
    value = encode_lock(lock)
    assert len(value) < len(lock) // 10
    assert decode_lock(value) == lock
    with pytest.raises(ValueError):
        decode_lock(b"not a lock")


def test_a_claim_reads_back_and_an_unreadable_one_is_none() -> None:
    claim = Claim("10.0.0.2", 42, 3)
    assert Claim.decode(claim.encode()) == claim
    assert claim.bumped() == Claim("10.0.0.2", 42, 4)
    assert Claim.decode(None) is None and Claim.decode(b"{") is None
    assert Claim.decode(b'{"node": "n"}') is None


def test_a_claim_is_stale_only_when_its_beat_stops_moving() -> None:
    watch = ClaimWatch(stale_after=30)
    claim = Claim("n", 1)
    assert not watch.stale(claim, now=100)
    assert not watch.stale(claim, now=129)
    assert not watch.stale(claim.bumped(), now=150)  # it beat: alive, judged afresh
    assert not watch.stale(claim.bumped(), now=179)
    assert watch.stale(claim.bumped(), now=181)
    assert watch.stale(None, now=0)


def test_solve_tag_is_for_specs_the_cluster_solves() -> None:
    assert parse_spec({"dependencies": {"a": "*"}, "solve_tag": "x"}).solve_tag == "x"
    with pytest.raises(PixiSpecError, match="solve_tag"):
        parse_spec({**MANIFEST, "lock_content": "version: 6\n", "solve_tag": "x"})
    with pytest.raises(PixiSpecError, match="solve_tag"):
        parse_spec({"dependencies": {"a": "*"}, "solve_tag": " "})
    with pytest.raises(PixiSpecError, match="solve_tag"):
        parse_spec({"dependencies": {"a": "*"}, "solve_tag": 5})
