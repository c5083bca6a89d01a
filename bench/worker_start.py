"""Worker start with a cached environment: fresh worker processes (tasks with max_calls=1,
and actors), modes interleaved round by round on one local Ray cluster, with
PYTHONDONTWRITEBYTECODE=1.

Two latencies per sample, on a clock all processes share: the round trip (submitting the
task, or creating the actor, until the driver holds the task's result, or the first
method's) is what a user waits for and is the headline; the first user line (until the
new worker runs the first line of user code) is split at the worker process's fork (from
/proc, 10 ms resolution): before it the raylet and the runtime_env agent (the plugin
pipeline), after it setup_worker.py, the py_executable and Python importing Ray.
"""

from __future__ import annotations

import random
import re
import stat
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    FRESH_WORKERS,
    LocalCluster,
    Node,
    Table,
    inline_spec,
    local_cluster,
    log,
    median,
    ms,
    now,
    percentile,
    ratio,
)

NONE, FLOOR, PIP, PIXI, PIXI_RUN = MODES = (
    "no runtime_env", "floor (bash wrapper)", "pip (cached)", "ray-pixi", "pixi run per worker")
KINDS = ("task", "actor")
PIP_PACKAGE = "six"
PIXI_PACKAGES = {"pyjokes": "==0.8.3"}


def _probes() -> tuple[Any, Any]:
    """The task and actor, defined here so cloudpickle ships them by value: the workers'
    environments do not have the `bench` package."""
    import ray

    def stamp() -> dict[str, Any]:
        import os
        import sys
        import time

        t = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") \
            else time.time()
        fork = None
        try:
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            fork = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
        # CPU time survives exec: setup_worker.py, bash and the interpreter's start, all
        # in this one process until this line.
        return {"t": t, "fork": fork, "cpu": time.process_time(), "pid": os.getpid(),
                "python": sys.executable, "prefix": sys.prefix}

    @ray.remote(max_calls=1, num_cpus=1)
    def task_probe() -> dict[str, Any]:
        return stamp()

    @ray.remote(num_cpus=1)
    class ActorProbe:
        def __init__(self) -> None:
            self.stamp = stamp()

        def get(self) -> dict[str, Any]:
            return self.stamp

    return task_probe, ActorProbe


def write_floor_wrapper(path: Path) -> Path:
    """The least any py_executable costs: a bash script exec'ing the cluster's python."""
    path.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _sample(kind: str, runtime_env: dict[str, Any] | None, probes: tuple[Any, Any]
            ) -> dict[str, Any]:
    import ray

    task_probe, actor_probe = probes
    options = {"runtime_env": runtime_env} if runtime_env else {}
    wall = time.time()
    submitted = now()
    if kind == "task":
        seen = ray.get(task_probe.options(**options).remote())
        done = now()
    else:
        actor = actor_probe.options(**options).remote()
        seen = ray.get(actor.get.remote())
        done = now()
        ray.kill(actor)
    fresh = seen["fork"] is None or seen["fork"] >= submitted - 0.02
    before = None if seen["fork"] is None else max(0.0, seen["fork"] - submitted)
    return {"start": seen["t"] - submitted, "before": before,
            "process": None if before is None else seen["t"] - seen["fork"],
            "round_trip": done - submitted, "cpu": seen["cpu"], "fresh": fresh,
            "python": seen["python"], "prefix": seen["prefix"], "pid": seen["pid"],
            "wall": wall}


def wait_exited(pid: int | None, timeout: float = 10.0) -> bool:
    """Until process `pid` (the previous sample's worker) has exited (or is a zombie), so
    the next start is fresh and no exiting worker competes with it for the CPUs."""
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (OSError, IndexError):
            return True
        time.sleep(0.005)  # polls the condition with a deadline
    return False


def run(n: Node, samples: int, warmup: int, seed: int = 7) -> tuple[list[Table], dict[str, Any]]:
    floor = write_floor_wrapper(n.root / "floor-python")
    envs: dict[str, dict[str, Any] | None] = {
        NONE: None,
        FLOOR: {"py_executable": str(floor)},
        PIP: {"pip": [PIP_PACKAGE]},
        PIXI: {"pixi": inline_spec(**PIXI_PACKAGES)},
        PIXI_RUN: None,  # set once the ray-pixi env is installed: it runs in that env
    }
    log("worker start: starting a local Ray cluster (2 CPUs) with the plugin registered")
    with local_cluster(n, "ray-ws", **FRESH_WORKERS) as cluster:
        probes = _probes()
        setup_seconds: dict[str, float] = {}
        for mode in (NONE, FLOOR, PIP, PIXI):
            started = time.monotonic()
            first = _sample("task", envs[mode], probes)
            setup_seconds[mode] = time.monotonic() - started
            log(f"worker start: first {mode!r} worker (setup included): "
                f"{setup_seconds[mode]:.1f}s, python {first['python']}")
            if mode == PIXI:
                prefix = Path(first["prefix"])
        workspace = prefix.parents[2]
        manifest = workspace / "pixi.toml"
        envs[PIXI_RUN] = {"py_executable": (f"{n.pixi} run --manifest-path {manifest} "
                                            "-e default --frozen python")}
        started = time.monotonic()
        _sample("task", envs[PIXI_RUN], probes)
        setup_seconds[PIXI_RUN] = time.monotonic() - started

        rng = random.Random(seed)  # noqa: S311 - an order, not a secret
        results: dict[str, list[dict[str, Any]]] = {f"{m}|{k}": [] for m in MODES
                                                    for k in KINDS}
        reused = 0
        rounds = warmup + samples
        log(f"worker start: {rounds} rounds ({warmup} warm-up) x {len(MODES)} modes x "
            f"{len(KINDS)} kinds, interleaved")
        import os

        loads = [os.getloadavg()]
        last: int | None = None
        since = time.time()
        for r in range(rounds):
            if r == warmup:
                since = time.time()
            order = [(m, k) for m in MODES for k in KINDS]
            rng.shuffle(order)
            for mode, kind in order:
                for _attempt in range(3):
                    wait_exited(last)
                    s = _sample(kind, envs[mode], probes)
                    last = s["pid"]
                    if s["fresh"]:
                        break
                    reused += 1
                if r >= warmup and s["fresh"]:
                    results[f"{mode}|{kind}"].append({**s, "round": r})
            loads.append(os.getloadavg())
            if (r + 1) % 5 == 0 or r + 1 == rounds:
                log(f"worker start: round {r + 1}/{rounds}")
        wait_exited(last)
        agent = agent_setups(cluster, since)
    raw = {"samples": {k: [{f: s[f] for f in ("start", "before", "process", "round_trip",
                                              "cpu", "round")}
                           for s in xs] for k, xs in results.items()},
           "agent_setup_ms": agent, "setup_seconds": setup_seconds,
           "load": loads, "reused": reused}
    context = {"prefix": prefix, "manifest": manifest, "floor": floor,
               "pixi_run": envs[PIXI_RUN]["py_executable"], "cluster": cluster}  # type: ignore[index]
    return _tables(results, setup_seconds, agent, reused, loads), raw | {"_context": context}


# -- the agent's own account ----------------------------------------------------------------
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+\w+ runtime_env_agent\.py:\d+ -- "
                   r"(Creating runtime env|Successfully created runtime env|"
                   r"Runtime env already created successfully\. Env): (.*)$")


def _mode_of(serialized: str) -> str | None:
    if '"pixi"' in serialized:
        return PIXI
    if '"pip"' in serialized:
        return PIP
    if "pixi run" in serialized:
        return PIXI_RUN
    if '"py_executable"' in serialized:
        return FLOOR
    return None


def agent_setups(cluster: LocalCluster, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per mode, from the runtime_env agent's log from wall time `since` on: how long each
    setup took in the agent (Creating -> Successfully created; 1 ms resolution), how many
    requests it answered from its own cache instead, and the last context it produced."""
    path = cluster.logs / "runtime_env_agent.log"
    started: dict[str, datetime] = {}
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        stamp = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
        what, rest = m[2], m[3]
        serialized = rest.split(" with timeout ")[0].split(", context: ")[0]
        mode = _mode_of(serialized)
        if mode is None or stamp.timestamp() < since - 0.002:
            continue
        entry = out.setdefault(mode, {"setups_ms": [], "cached": 0})
        if what == "Creating runtime env":
            started[serialized] = stamp
        elif what.startswith("Successfully") and serialized in started:
            entry["setups_ms"].append(
                (stamp - started.pop(serialized)).total_seconds() * 1000)
            entry["context"] = rest.split(", context: ", 1)[1]
        elif what.startswith("Runtime env already"):
            entry["cached"] += 1
    return out


def paired(samples: dict[str, list[dict[str, Any]]], mode: str, kinds: tuple[str, ...],
           metric: str = "round_trip") -> float:
    """Median over rounds of mode/floor, each pair measured in the same round (a few
    seconds apart), which cancels the machine's load drifting over the run."""
    ratios = []
    for kind in kinds:
        floor = {s["round"]: s[metric] for s in samples[f"{FLOOR}|{kind}"]}
        ratios += [s[metric] / floor[s["round"]] for s in samples[f"{mode}|{kind}"]
                   if s["round"] in floor]
    return median(ratios)


def headline(raw: dict[str, Any]) -> dict[str, float]:
    """ray-pixi/floor and pixi-run/floor, per kind and pooled: medians' ratio and paired
    ratio, of the round trip and the first user line."""
    samples = raw["samples"]
    out: dict[str, float] = {}
    for metric in ("round_trip", "start"):
        for kind in (*KINDS, "both"):
            kinds = KINDS if kind == "both" else (kind,)

            def med(mode: str, kinds: tuple[str, ...] = kinds, metric: str = metric) -> float:
                return median([s[metric] for k in kinds for s in samples[f"{mode}|{k}"]])

            for name, mode in (("pixi", PIXI), ("pixi_run", PIXI_RUN)):
                out[f"{metric}|{kind}|{name}"] = med(mode) / med(FLOOR)
                out[f"{metric}|{kind}|{name}|paired"] = paired(samples, mode, kinds, metric)
    return out


def _tables(results: dict[str, list[dict[str, Any]]], setup_seconds: dict[str, float],
            agent: dict[str, dict[str, Any]], reused: int,
            loads: list[tuple[float, float, float]]) -> list[Table]:
    import os

    main = Table(
        "Worker start, cached environment (ms; headline: round trip vs the floor)",
        ["mode", "kind", "n", "round trip", "p90", "vs floor", "paired", "first user line",
         "vs floor", "paired", "worker CPU", "to fork", "after fork"])

    def col(mode: str, kinds: tuple[str, ...], key: str) -> list[float]:
        return [s[key] for k in kinds for s in results[f"{mode}|{k}"] if s[key] is not None]

    for kind in (*KINDS, "both"):
        kinds = KINDS if kind == "both" else (kind,)
        floor_rt = median(col(FLOOR, kinds, "round_trip"))
        floor_start = median(col(FLOOR, kinds, "start"))
        for mode in MODES:
            rt, start = col(mode, kinds, "round_trip"), col(mode, kinds, "start")
            main.add(mode, kind, len(rt), ms(median(rt)), ms(percentile(rt, 90)),
                     ratio(median(rt), floor_rt),
                     f"{paired(results, mode, kinds):.2f}x", ms(median(start)),
                     ratio(median(start), floor_start),
                     f"{paired(results, mode, kinds, 'start'):.2f}x",
                     ms(median(col(mode, kinds, "cpu"))),
                     ms(median(col(mode, kinds, "before"))),
                     ms(median(col(mode, kinds, "process"))))
    peak = max(load[0] for load in loads)
    main.notes += [
        "floor: py_executable = a bash wrapper that execs the cluster's own python, the "
        "least any runtime_env costs; ray-pixi: runtime_env={'pixi': pixi(pypi_dependencies="
        f"{PIXI_PACKAGES})}}, installed before measuring; pixi run per worker: py_executable "
        "= `pixi run --manifest-path <that env's manifest> -e default --frozen python` (the "
        "upstream plugin's way) in the same environment; pip: Ray's pip runtime_env "
        f"({PIP_PACKAGE}), installed before measuring.",
        "round trip: submitting the task (creating the actor) until the driver has the "
        "result (of the actor's first method); first user line: until the new worker runs "
        "the task's (the actor constructor's) first line. to fork: until the process that "
        "runs it was forked (the raylet, the runtime_env agent; for `pixi run` also "
        "setup_worker.py and pixi, whose child the worker is); after fork: setup_worker.py "
        "(which execs the py_executable in the same process) and Python importing Ray "
        "until the task runs. Fork times have 10 ms resolution. paired: the median of "
        "each round's own mode/floor ratio (samples seconds apart), which cancels load "
        "drifting over the run. worker CPU: the worker process's CPU time (user + system) "
        "until the first user line, which survives exec: setup_worker.py, bash and the "
        "interpreter with its imports, little affected by other load (for `pixi run` only "
        "the python pixi starts).",
        f"Modes interleaved in a shuffled order each round; each sample waits until the "
        f"previous worker has exited. {reused} sample(s) landed on a worker that existed "
        "before the submission and were retried: every sample counted is a fresh process.",
        f"Load average (1 min) during the run: {loads[0][0]:.1f} at the start, "
        f"{loads[-1][0]:.1f} at the end, {peak:.1f} at its highest, on {os.cpu_count()} "
        "CPUs; PYTHONDONTWRITEBYTECODE=1 for every Ray process.",
    ]
    first = Table("First worker of each mode (setup included, s)", ["mode", "first start"])
    for mode in MODES:
        first.add(mode, round(setup_seconds[mode], 2))
    first.notes.append("ray-pixi's first start includes installing the environment (its "
                       "packages in the benchmark's pixi cache); pip's, creating its "
                       "virtualenv.")
    agent_table = Table(
        "The runtime_env agent's time per worker setup (ms, from its log)",
        ["mode", "setups", "median", "p90", "answered from the agent's cache"])
    for mode in (FLOOR, PIP, PIXI, PIXI_RUN):
        entry = agent.get(mode, {"setups_ms": [], "cached": 0})
        xs = entry["setups_ms"]
        agent_table.add(mode, len(xs), median(xs), percentile(xs, 90), entry["cached"])
    agent_table.notes.append(
        "From `Creating runtime env` to `Successfully created runtime env` in "
        "runtime_env_agent.log (1 ms resolution): Ray's whole plugin pipeline for one "
        "setup (working_dir, then each plugin's validate, get_uris, create on a URI-cache "
        "miss, modify_context). Every worker here is a new process whose runtime_env the "
        "agent forgot when the previous worker exited, so each start runs the pipeline.")
    return [main, first, agent_table]
