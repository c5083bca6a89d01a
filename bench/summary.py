"""What the sections say together: where ray-pixi's worker start differs from the floor's,
and what the plugin could cut from a first job. Every figure is one the run measured; a
row that combines several says how."""

from __future__ import annotations

from typing import Any

from bench.common import Table, median, ms, percentile
from bench.worker_start import FLOOR, KINDS, PIXI


def _med(samples: dict[str, list[dict[str, Any]]], mode: str, key: str) -> float:
    return median([s[key] for k in KINDS for s in samples[f"{mode}|{k}"]
                   if s.get(key) is not None])


def _paired_diff(samples: dict[str, list[dict[str, Any]]], key: str) -> float:
    """Median over rounds of ray-pixi minus floor (same round, same kind)."""
    return median(_pairs(samples, key))


def _spread(samples: dict[str, list[dict[str, Any]]], key: str) -> str:
    xs = _pairs(samples, key)
    return f"{ms(percentile(xs, 25)):.0f} .. {ms(percentile(xs, 75)):.0f} (n={len(xs)})"


def _pairs(samples: dict[str, list[dict[str, Any]]], key: str) -> list[float]:
    diffs = []
    for kind in KINDS:
        floor = {s["round"]: s[key] for s in samples[f"{FLOOR}|{kind}"]}
        diffs += [s[key] - floor[s["round"]] for s in samples[f"{PIXI}|{kind}"]
                  if s["round"] in floor and s[key] is not None and floor[s["round"]] is not None]
    return diffs


def worker_start_gap(raw: dict[str, Any]) -> Table:
    ws, bd = raw["worker_start"], raw["breakdown"]
    samples = ws["samples"]
    agent = ws["agent_setup_ms"]
    times, cpus = bd["times"], bd["cpus"]
    chain_floor = "chain, floor: setup_worker.py -> bash -> wrapper -> import"
    chain_pixi = "chain, ray-pixi: setup_worker.py -> bash -> env python -> import"
    inline = next((v for k, v in raw["setup_cost"].items() if k == "inline"), None)
    plugin_us = inline["hits"]["worker start"]["p50_us"] if inline else float("nan")

    table = Table("ray-pixi's worker start over the floor's: where the difference goes (ms; "
                  "positive: ray-pixi slower)",
                  ["part", "how measured", "difference", "p25 .. p75 of the pairs"])
    paired_rt = ms(_paired_diff(samples, "round_trip"))
    before = ms(_paired_diff(samples, "before"))
    chain_wall = ms(median(times[chain_pixi]) - median(times[chain_floor]))
    table.add("round trip, in Ray", "medians of all samples",
              ms(_med(samples, PIXI, "round_trip") - _med(samples, FLOOR, "round_trip")), "")
    table.add("round trip, in Ray", "median of same-round differences", paired_rt,
              _spread(samples, "round_trip"))
    table.add("first user line, in Ray", "median of same-round differences",
              ms(_paired_diff(samples, "start")), _spread(samples, "start"))
    table.add("  before the fork (raylet + agent)", "same-round differences (10 ms "
              "resolution)", before, _spread(samples, "before"))
    table.add("    the agent's pipeline", "agent log medians (1 ms resolution)",
              median(agent.get(PIXI, {}).get("setups_ms", []))
              - median(agent.get(FLOOR, {}).get("setups_ms", [])), "")
    table.add("      of which the plugin's own calls", "in-process: validate + 3 x get_uris + "
              "modify_context", plugin_us / 1000, "")
    table.add("  after the fork: the worker's CPU until the first user line",
              "same-round differences", ms(_paired_diff(samples, "cpu")),
              _spread(samples, "cpu"))
    table.add("  after the fork, outside Ray: the whole chain (wall)", "medians, interleaved",
              chain_wall, "")
    table.add("  after the fork, outside Ray: the whole chain (CPU)", "medians, interleaved",
              ms(median(cpus[chain_pixi]) - median(cpus[chain_floor])), "")
    table.add("left: round trip (pairs) - before the fork - the chain outside Ray (wall)",
              "arithmetic on the rows above", paired_rt - before - chain_wall, "")
    table.notes += [
        "The left row is what the parts measured apart do not account for: the worker "
        "connecting to the raylet and the GCS, receiving and running the task, and the "
        "driver receiving its result, which run the same code in both modes. Compare it "
        "with the spread of the pairs: a remainder inside it is not distinguishable from "
        "the shared machine's noise in this run.",
    ]
    return table


def first_job_cuts(raw: dict[str, Any]) -> Table | None:
    fj, bd = raw["first_job"], raw["breakdown"]
    runs = [r for r in fj["runs"] if r["tool"] == "ray-pixi"]
    if not runs:
        return None
    states = sorted({r["state"] for r in runs}, key=["cold", "warm"].index)
    times = bd["times"]
    penalty = median(times["env python: import Ray's worker, no .pyc (compiled in memory)"]) \
        - median(times["env python: import Ray's worker"])
    split = fj["split"]
    frozen = next((v for k, v in split.items() if "frozen" in k), float("nan"))
    table = Table("What the plugin could cut from a first job (s, medians; estimates "
                  "combining measured parts)", ["", *states])

    def row(label: str, f: Any) -> None:
        table.add(label, *[median([f(r) for r in runs if r["state"] == s]) for s in states])

    row("first result, as measured", lambda r: r["seconds"])
    row("bytecode on the first job's path (compileall + linking .pyc)",
        lambda r: r["marker_seconds"]["bytecode"])
    row("first result with bytecode written after the ready marker (minus bytecode, plus "
        "the first worker importing Ray without .pyc)",
        lambda r: r["seconds"] - r["marker_seconds"]["bytecode"] + penalty)
    row("pixi install as measured (includes the solve)", lambda r: r["steps"]["pixi install"])
    row("first result with the inline lock solved once and installed --frozen (minus pixi "
        "install, plus `install --frozen` from a lock, warm cache)",
        lambda r: r["seconds"] - r["steps"]["pixi install"] + frozen)
    row("both", lambda r: r["seconds"] - r["marker_seconds"]["bytecode"] + penalty
        - r["steps"]["pixi install"] + frozen)
    table.notes += [
        f"A worker importing Ray without .pyc costs {penalty:.2f} s more (breakdown table, "
        "wall): what each worker started before a background compile finished would pay "
        "(they cannot write bytecode with PYTHONDONTWRITEBYTECODE or a read-only store).",
        f"`pixi install --frozen` from the solved lock took {frozen:.2f} s with a warm cache "
        "(apart row of the breakdown); with a cold cache the downloads stay, so the cold "
        "column of that row is a lower bound.",
    ]
    return table
